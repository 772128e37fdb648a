//! Watch streams: newline-delimited `{"type", "object"}` events, flushed one per chunk.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::errors::ApiError;
use super::faults::{Faults, WatchControl};
use super::registry::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, Store, Target};
use super::table::{partial_metadata, table, IncludeObject};

/// How events are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Render {
    Full,
    Partial,
    Table(IncludeObject),
}

/// A watch request, parsed.
pub(crate) struct WatchRequest {
    pub target: Target,
    pub from: Option<u64>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Duration,
    pub render: Render,
    pub send_initial_events: bool,
}

struct Encoder {
    rt: ResourceType,
    version: String,
    render: Render,
    first_table: bool,
}

impl Encoder {
    fn line(&mut self, etype: &str, obj: &Value) -> Bytes {
        let mut obj = obj.clone();
        if obj.get("apiVersion").is_some() {
            obj["apiVersion"] = json!(self.rt.api_version(&self.version));
        }
        let object = match self.render {
            Render::Full => obj,
            Render::Partial => partial_metadata(&obj),
            Render::Table(inc) => {
                let t = table(&self.rt, &self.version, &[obj], inc, None, self.first_table);
                self.first_table = false;
                t
            }
        };
        let mut bytes =
            serde_json::to_vec(&json!({"type": etype, "object": object})).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.version), "metadata": meta});
        let mut bytes =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.status})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// What a watcher sees of one stored event, after selectors: (type, object) or nothing.
fn filter<'a>(req: &WatchRequest, ev: &'a Event) -> Option<(&'static str, &'a Value)> {
    let sel = |o: &Value| req.labels.matches(o) && req.fields.matches(o);
    let cur = sel(&ev.object);
    match (ev.etype, ev.prev.as_ref().map(sel)) {
        ("MODIFIED", Some(true)) if !cur => Some(("DELETED", &ev.object)),
        ("MODIFIED", Some(false)) if cur => Some(("ADDED", &ev.object)),
        (t, _) if cur => Some((t, &ev.object)),
        _ => None,
    }
}

/// Starts a watch and returns the streaming body.
pub(crate) fn start(store: &Store, faults: &Faults, req: WatchRequest) -> Result<Body, ApiError> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut ctl = faults.watch_control();
    ctl.borrow_and_update();
    let from = if req.send_initial_events {
        None
    } else {
        req.from
    };
    let started = store.watch(&req.target, from);
    let (rt, initial, mut events, start_rv) = match started {
        Ok(x) => x,
        Err(e) if e.code == 410 => {
            // Like the real server: the watch opens, reports the error, and ends.
            let line = error_line(&e);
            let _ = tx.try_send(line);
            drop(tx);
            return Ok(body(rx));
        }
        Err(e) => return Err(e),
    };
    let key = rt.key();
    let mut enc = Encoder {
        rt,
        version: req.target.version.clone(),
        render: req.render,
        first_table: true,
    };
    tokio::spawn(async move {
        let mut last_rv = start_rv;
        for ev in &initial {
            if let Some((t, o)) = filter(&req, ev) {
                if tx.send(enc.line(t, o)).await.is_err() {
                    return;
                }
            }
        }
        if req.send_initial_events && tx.send(enc.bookmark(last_rv, true)).await.is_err() {
            return;
        }
        let in_ns = |ev: &Event| {
            ev.key == key
                && req
                    .target
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == ev.namespace)
        };
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(req.bookmark_interval.max(Duration::from_millis(10)));
        tick.tick().await;
        loop {
            let line = tokio::select! {
                r = events.recv() => match r {
                    Ok(ev) => {
                        last_rv = last_rv.max(ev.rv);
                        if !in_ns(&ev) { continue; }
                        match filter(&req, &ev) {
                            Some((t, o)) => enc.line(t, o),
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick(), if req.bookmarks => {
                    // Deliver everything already committed before vouching for an RV.
                    loop {
                        match events.try_recv() {
                            Ok(ev) => {
                                last_rv = last_rv.max(ev.rv);
                                if in_ns(&ev) {
                                    if let Some((t, o)) = filter(&req, &ev) {
                                        if tx.send(enc.line(t, o)).await.is_err() { return; }
                                    }
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    enc.bookmark(last_rv, false)
                }
                _ = &mut deadline => break,
                r = ctl.changed() => {
                    if r.is_err() { break; }
                    let (_, what) = *ctl.borrow_and_update();
                    match what {
                        WatchControl::None => continue,
                        WatchControl::Drop => break,
                        WatchControl::Gone => {
                            let _ = tx.send(error_line(&ApiError::expired(last_rv, last_rv + 1))).await;
                            break;
                        }
                    }
                }
                _ = tx.closed() => break,
            };
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    Ok(body(rx))
}

fn body(rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }))
}
