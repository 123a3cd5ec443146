//! One connection shared by two scopes through a `Registry`: references going up and down, the grace period, and a
//! single teardown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use connman_pool::registry::{Config, Get, Listen, Listener, ListenerId, Registry, Scope, Spec};
use connman_tcp::{Connection, Handler, Writer};
use connman_tests::flaky::FlakyServer;
use tokio::time::{sleep, timeout};

use crate::report::{Clock, Row};

/// The demo's grace period (connection-manager's default is 20 s).
const GRACE: Duration = Duration::from_secs(2);

type Listeners = Arc<Mutex<Vec<(String, Listener<Bytes>)>>>;

/// A supervised TCP connection whose incoming data fires the listeners of every holding scope.
#[derive(Debug)]
struct Link {
    conn: Connection,
    writer: Arc<Mutex<Option<Writer>>>,
    listeners: Listeners,
}

impl Listen for Link {
    type Event = Bytes;

    fn add_listener(&self, name: &str, listener: Listener<Bytes>) {
        lock(&self.listeners).push((name.to_owned(), listener));
    }

    fn remove_listener(&self, name: &str, id: &ListenerId) {
        lock(&self.listeners).retain(|(n, l)| !(n == name && l.id() == id));
    }
}

struct LinkHandler {
    writer: Arc<Mutex<Option<Writer>>>,
    listeners: Listeners,
}

impl Handler for LinkHandler {
    fn on_connect(&mut self, writer: Writer) {
        *lock(&self.writer) = Some(writer);
    }

    fn on_data(&mut self, data: Bytes) {
        let listeners = lock(&self.listeners).clone();
        for (_, listener) in listeners.iter().filter(|(name, _)| name == "data") {
            listener.call(&data);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) async fn run(clock: Clock) -> Result<Vec<Row>, String> {
    let server = FlakyServer::builder()
        .greeting(Bytes::new())
        .start()
        .await
        .map_err(|e| format!("cannot start the echo server: {e}"))?;
    let addr = server.addr();
    let config = Config::new().grace(GRACE);
    let registry: Registry<Link, String, ()> =
        Registry::with_config(config).map_err(|e| e.to_string())?;
    let web = registry.manager("feeds", Scope::new("web", ()));
    let worker = registry.manager("feeds", Scope::new("worker", ()));

    let heard = Arc::new(AtomicU64::new(0));
    let torn_down = Arc::new(AtomicU64::new(0));
    let (heard2, torn2, clock2, clock3) = (
        heard.clone(),
        torn_down.clone(),
        clock.clone(),
        clock.clone(),
    );
    let spec = Spec::new("feed", "token".to_owned(), move |_ctx| async move {
        let writer = Arc::new(Mutex::new(None));
        let listeners: Listeners = Arc::default();
        let conn = Connection::connect(
            addr,
            LinkHandler {
                writer: writer.clone(),
                listeners: listeners.clone(),
            },
        )
        .expect("inside a runtime");
        let mut state = conn.state();
        state
            .wait_for(|s| s.is_up())
            .await
            .map_err(|_| connman_core::error::Closed::new())?;
        Ok::<_, connman_core::BoxError>(Link {
            conn,
            writer,
            listeners,
        })
    })
    .listener("data", move |ctx, data: &Bytes| {
        heard2.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(data);
        clock2.say(
            "registry",
            &format!("scope {} heard {:?}", ctx.scope().id(), text.trim_end()),
        );
    })
    .disconnect(move |link: Arc<Link>| {
        let (torn, clock) = (torn2.clone(), clock3.clone());
        async move {
            link.conn.disconnect();
            link.conn.closed().await;
            torn.fetch_add(1, Ordering::Relaxed);
            clock.say("registry", "grace period over: \"feed\" torn down");
        }
    });

    let mut row = Row::new("registry");
    let mut counts = Vec::new();
    let client = web
        .create(spec)
        .await
        .map_err(|e| format!("create failed: {e}"))?;
    counts.push(client.references());
    clock.say(
        "registry",
        &format!(
            "scope web created \"feed\": {} reference",
            client.references()
        ),
    );
    let Get::Found(shared) = worker.get("feed", &"token".to_owned()) else {
        return Err("the worker scope could not get \"feed\"".into());
    };
    counts.push(shared.references());
    clock.say(
        "registry",
        &format!(
            "scope worker got \"feed\": {} references",
            shared.references()
        ),
    );
    if let Get::Mismatch = worker.get("feed", &"wrong".to_owned()) {
        clock.say("registry", "a get with the wrong credentials is a mismatch");
    }

    // One write, heard by both scopes' listeners.
    let writer = shared
        .connection()
        .and_then(|link| lock(&link.writer).clone());
    if let Some(writer) = writer {
        writer
            .write_all(b"news for every holder\n")
            .await
            .map_err(|e| e.to_string())?;
        row.sent += 1;
    }
    let heard_both = timeout(Duration::from_secs(2), async {
        while heard.load(Ordering::Relaxed) < 2 {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok();
    if heard_both {
        row.ok += 1;
    } else {
        row.lost += 1;
    }

    let step = |name: &str, what: &str, refs: usize, counts: &mut Vec<usize>| {
        counts.push(refs);
        clock.say(
            "registry",
            &format!("scope {name} {what}: {refs} references"),
        );
    };
    sleep(Duration::from_millis(500)).await;
    worker.remove("feed");
    step("worker", "let go", web.reference_count("feed"), &mut counts);
    web.remove("feed");
    step("web", "let go", web.reference_count("feed"), &mut counts);
    clock.say("registry", &format!("grace period of {GRACE:?} starts"));
    sleep(GRACE / 2).await;
    let back = matches!(worker.get("feed", &"token".to_owned()), Get::Found(_));
    step(
        "worker",
        "came back within the grace period",
        web.reference_count("feed"),
        &mut counts,
    );
    sleep(GRACE).await;
    let survived = web.exists("feed") && torn_down.load(Ordering::Relaxed) == 0;
    worker.remove("feed");
    step(
        "worker",
        "let go again",
        web.reference_count("feed"),
        &mut counts,
    );
    timeout(GRACE * 3, async {
        while torn_down.load(Ordering::Relaxed) == 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| "the connection was never torn down")?;
    sleep(Duration::from_millis(100)).await;

    let teardowns = torn_down.load(Ordering::Relaxed);
    let gone = web.exists("feed");
    // The scopes go with their managers, and the namespace with its last scope: the tables are empty again.
    drop((web, worker));
    let left = registry.stats();
    clock.say(
        "registry",
        &format!(
            "managers dropped: {} namespaces, {} scopes, {} connections left",
            left.namespaces, left.scopes, left.connections
        ),
    );
    // Any deviation from the expected story fails the demo.
    if !back
        || !survived
        || teardowns != 1
        || gone
        || counts != [1, 2, 1, 0, 1, 0]
        || left != Default::default()
    {
        row.mismatched += 1;
    }
    row.note = format!(
        "references {}; grace cancelled once; torn down {teardowns}x; tables empty after",
        counts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("→")
    );
    Ok(vec![row])
}
