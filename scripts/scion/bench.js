// SCION's events per CPU-second on a document, the way `ors bench` measures ours: one
// statechart, `count` external events of one name, one macrostep each, until the count
// is reached or the statechart ends. Prints one JSON line.
// Usage: node bench.js FILE [EVENT] [COUNT]
'use strict';
const scxml = require('@scion-scxml/scxml');

const [file, event = 'tick', count = '100000'] = process.argv.slice(2);
const n = Number(count);

scxml.pathToModel(file, (err, model) => {
  if (err) throw err;
  model.prepare((err, fnModel) => {
    if (err) throw err;
    // Warm up V8's JIT first (ours runs compiled code from the start). Two statecharts
    // of one prepared model share their datamodel in SCION, so the measured one is
    // started afresh after the warm-up, from a model prepared again.
    const warm = new scxml.core.Statechart(fnModel);
    warm.start();
    for (let i = 0; i < Math.min(n, 10000); i++) warm.gen({ name: event });
    model.prepare((err, fresh) => {
      if (err) throw err;
      measure(new scxml.core.Statechart(fresh));
    });
  });
});

function measure(sc) {
    sc.start();
    const before = process.cpuUsage();
    let events = 0;
    while (events < n && !sc.isFinal()) {
      sc.gen({ name: event });
      events++;
    }
    const used = process.cpuUsage(before);
    const seconds = (used.user + used.system) / 1e6;
    console.log(JSON.stringify({
      engine: 'scion',
      document: file,
      events,
      events_per_cpu_second: Math.round(events / seconds),
      configuration_after_events: sc.getConfiguration(),
    }));
}
