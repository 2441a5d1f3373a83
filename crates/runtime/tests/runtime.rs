//! The runtime without HTTP, on the in-memory store: the worker shell, the scheduler and
//! cross-worker routing, driven through the `Runtime` API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ors_runtime::{Runtime, RuntimeConfig, RuntimeError, StartRequest};
use ors_scxml::Event;
use ors_store::{MemoryStore, SessionStore};
use serde_json::json;

const PARENT: &str = r##"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" initial="working">
  <datamodel><data id="replies" expr="0"/><data id="ticks" expr="0"/></datamodel>
  <state id="working">
    <invoke id="kid"><content>
      <scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
        <state id="c">
          <transition event="ping"><send target="#_parent" event="pong"/></transition>
          <transition event="stop" target="end"/>
        </state>
        <final id="end"/>
      </scxml>
    </content></invoke>
    <transition event="ping"><send target="#_kid" event="ping"/></transition>
    <transition event="pong"><assign location="replies" expr="replies + 1"/></transition>
    <transition event="later"><send event="tick" delay="200ms"/></transition>
    <transition event="tick"><assign location="ticks" expr="ticks + 1"/></transition>
    <transition event="stop-kid"><send target="#_kid" event="stop"/></transition>
    <transition event="done.invoke.kid" target="alone"/>
  </state>
  <state id="alone"/>
</scxml>"##;

async fn runtime(store: Arc<MemoryStore>, dir: &std::path::Path) -> Runtime {
    std::fs::write(dir.join("parent.scxml"), PARENT).unwrap();
    let cfg = RuntimeConfig {
        workers: 4,
        documents_dir: Some(dir.to_path_buf()),
        schedule_poll: Duration::from_millis(50),
        ..RuntimeConfig::default()
    };
    Runtime::start(cfg, store).await.unwrap()
}

async fn until(rt: &Runtime, sid: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let q = rt.query(sid).await.unwrap();
        let v = serde_json::to_value(&q).unwrap();
        if ok(&v) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_children_timers_and_termination() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = runtime(store.clone(), dir.path()).await;
    let mut sids = Vec::new();
    // Several sessions, so that parents and children land on different workers.
    for _ in 0..8 {
        let req = StartRequest {
            src: "parent.scxml".into(),
            ..StartRequest::default()
        };
        sids.push(rt.start_session(req).await.unwrap());
    }
    for sid in &sids {
        for _ in 0..3 {
            rt.send_event(sid, Event::external("ping", None))
                .await
                .unwrap();
        }
        rt.send_event(sid, Event::external("later", None))
            .await
            .unwrap();
    }
    for sid in &sids {
        until(&rt, sid, "three pongs from the child", |v| {
            v["datamodel"]["replies"] == 3
        })
        .await;
        until(&rt, sid, "the delayed send", |v| {
            v["datamodel"]["ticks"] == 1
        })
        .await;
    }
    // Every timer fired once and its entry goes: the scheduler deletes an entry after the
    // fired event's write is acknowledged, so shortly after the query shows the effect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.due_schedules(u64::MAX, 100).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "timer entries left: {:?}",
            store.due_schedules(u64::MAX, 100).await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The child ends: the parent hears done.invoke, and the child's record goes.
    let sid = &sids[0];
    rt.send_event(sid, Event::external("stop-kid", None))
        .await
        .unwrap();
    until(&rt, sid, "done.invoke from the child", |v| {
        v["configuration"] == json!(["alone"])
    })
    .await;
    // Terminate: the session is gone from the store, queries say it is done.
    rt.terminate(sid).await.unwrap();
    assert!(store.read_session(sid).await.unwrap().is_none());
    assert!(rt.query(sid).await.unwrap().done);
    let e = rt.send_event(sid, Event::external("ping", None)).await;
    assert!(matches!(e, Err(RuntimeError::NotFound(_))), "{e:?}");
    // The other sessions and their children are stored: 7 parents + 7 children (+1 child
    // of the first, which ended: gone).
    let stored = store.node_sessions("node1").await.unwrap();
    assert_eq!(stored.len(), 14, "{stored:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = runtime(store.clone(), dir.path()).await;
    let req = StartRequest {
        src: "parent.scxml".into(),
        ..StartRequest::default()
    };
    let sid = rt.start_session(req).await.unwrap();
    rt.send_event(&sid, Event::external("ping", None))
        .await
        .unwrap();
    until(&rt, &sid, "a pong", |v| v["datamodel"]["replies"] == 1).await;
    rt.send_event(&sid, Event::external("later", None))
        .await
        .unwrap();
    rt.shutdown().await;
    // A new runtime on the same store recovers the parent, its child and the timer.
    let rt = runtime(store.clone(), dir.path()).await;
    until(&rt, &sid, "the timer after the restart", |v| {
        v["datamodel"]["ticks"] == 1
    })
    .await;
    rt.send_event(&sid, Event::external("ping", None))
        .await
        .unwrap();
    until(&rt, &sid, "the recovered child answers", |v| {
        v["datamodel"]["replies"] == 2
    })
    .await;
    rt.shutdown().await;
}

/// A process that still believes it is primary (its lease has not run out by its own
/// clock) but whose node lease another process has taken: its next write is refused by
/// the store, it answers no `200`, and it steps down at once instead of at its next
/// renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fenced_by_a_newer_lease_deposes_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let rt = runtime(store.clone(), dir.path()).await;
    assert_eq!(rt.role(), ors_runtime::NodeRole::Primary);
    let req = StartRequest {
        src: "parent.scxml".into(),
        ..StartRequest::default()
    };
    let sid = rt.start_session(req).await.unwrap();
    let before = store.read_session(&sid).await.unwrap().unwrap();
    // Another process takes the lease (as after this one's pause past the lease).
    let name = ors_store::node_lease(&RuntimeConfig::default().node_id);
    let mine = store.read_lease(&name).await.unwrap().unwrap();
    store.release_lease(&mine).await.unwrap();
    let theirs = store
        .acquire_lease(&name, "thief", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(theirs.token > mine.token);
    match rt.send_event(&sid, Event::external("later", None)).await {
        Err(RuntimeError::NotPrimary { .. }) => {}
        other => panic!("a fenced write must not be acknowledged, got {other:?}"),
    }
    assert_eq!(
        store.read_session(&sid).await.unwrap().unwrap().version,
        before.version,
        "nothing of the deposed process landed"
    );
    // (The timer's schedule entry, written before the snapshot, may remain: schedule
    // entries are not fenced, and one the session's state does not know fires as a no-op.)
    let start = Instant::now();
    while rt.role() != ors_runtime::NodeRole::Backup {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "it never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await;
}
