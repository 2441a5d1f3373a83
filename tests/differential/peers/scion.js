// The SCION 4.3.27 driver of the differential harness. Reads jobs, one JSON object per
// line on stdin: {"id": N, "doc": "<scxml ...>", "events": ["e1", ...]}. Starts the
// document, sends the events one at a time, and writes one JSON line per job:
// {"id": N, "steps": [{"logs": [...], "config": [...], "done": bool}, ...]} where step 0
// is the start and step k the k-th event; or {"id": N, "error": "..."}.
'use strict';
const readline = require('readline');
const scxml = require('@scion-scxml/scxml');

const lines = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
let current = null;

// SCION throws some errors from callbacks; answer the job at hand instead of dying.
process.on('uncaughtException', (e) => {
  if (current) {
    const job = current;
    current = null;
    process.stdout.write(JSON.stringify({ id: job.id, error: String(e && e.stack || e) }) + '\n');
    busy = false;
    pump();
  } else {
    throw e;
  }
});

lines.on('line', (line) => {
  if (line.trim() === '') return;
  queue.push(JSON.parse(line));
  pump();
});

function pump() {
  if (busy || queue.length === 0) return;
  busy = true;
  const job = queue.shift();
  current = job;
  run(job, (out) => {
    if (current !== job) return; // already answered with an error
    current = null;
    process.stdout.write(JSON.stringify(out) + '\n');
    busy = false;
    pump();
  });
}

function run(job, reply) {
  scxml.documentStringToModel(`job${job.id}.scxml`, job.doc, (err, model) => {
    if (err) return reply({ id: job.id, error: String(err) });
    model.prepare((err, fnModel) => {
      if (err) return reply({ id: job.id, error: String(err) });
      let logs = [];
      const steps = [];
      try {
        const sc = new scxml.core.Statechart(fnModel, {
          console: { log: (_label, message) => logs.push(String(message)) },
          // SCION keeps every statechart in a registry for life (by default one shared
          // map); a map per job lets each be collected, or a long sweep runs out of heap.
          sessionRegistry: new Map(),
        });
        const record = () => {
          const done = sc.isFinal();
          steps.push({ logs, config: done ? [] : sc.getConfiguration().slice().sort(), done });
          logs = [];
        };
        sc.start();
        record();
        for (const name of job.events) {
          if (sc.isFinal()) break;
          sc.gen({ name });
          record();
        }
      } catch (e) {
        return reply({ id: job.id, error: String(e && e.stack || e) });
      }
      reply({ id: job.id, steps });
    }, /* hostContext */ undefined);
  });
}
