//! Test doubles shared by the registry tests (included with `#[path]`): a connection that keeps its listeners, and a
//! probe that counts calls.

#![allow(dead_code, unreachable_pub)] // Each test file uses a different part of the support module.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connman_pool::registry::{Config, Listen, Listener, ListenerId, Registry, Scope, Spec};

/// Credentials, as connection-manager's plain objects.
pub type Creds = BTreeMap<&'static str, &'static str>;

/// A registry of mock connections whose scopes carry a string.
pub type Reg = Registry<Conn, Creds, &'static str>;

/// The credentials `{ nick: "user" }`.
pub fn creds() -> Creds {
    BTreeMap::from([("nick", "user")])
}

/// A mock connection: it keeps its listeners so a test can fire events at them.
#[derive(Debug)]
pub struct Conn {
    /// Which connect made it, from 1.
    pub generation: usize,
    listeners: Mutex<Vec<(String, Listener<String>)>>,
    /// Every `remove_listener` call, as (event name, scope id).
    pub removed: Mutex<Vec<(String, String)>>,
}

impl Conn {
    /// A connection made by connect number `generation`.
    pub fn new(generation: usize) -> Self {
        Self {
            generation,
            listeners: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
        }
    }

    /// Fires `event` at every listener of `name`.
    pub fn fire(&self, name: &str, event: &str) {
        let listeners: Vec<_> = self
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .collect();
        for listener in listeners {
            listener.call(&event.to_string());
        }
    }

    /// The scope ids of the listeners attached to `name`, sorted.
    pub fn scopes(&self, name: &str) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.id().scope().to_string())
            .collect();
        scopes.sort();
        scopes
    }
}

impl Listen for Conn {
    type Event = String;

    fn add_listener(&self, name: &str, listener: Listener<String>) {
        self.listeners
            .lock()
            .unwrap()
            .push((name.to_string(), listener));
    }

    fn remove_listener(&self, name: &str, id: &ListenerId) {
        self.removed
            .lock()
            .unwrap()
            .push((name.to_string(), id.scope().to_string()));
        self.listeners
            .lock()
            .unwrap()
            .retain(|(n, l)| !(n == name && l.id() == id));
    }
}

/// What the connect function of a [`Probe`] spec does.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// Succeed after the delay.
    Ok(Duration),
    /// Fail after the delay.
    Fail(Duration),
    /// Never finish.
    Hang,
}

/// Counts connects and disconnects and records what callbacks saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// How many connects started.
    pub connects: Arc<AtomicUsize>,
    /// How many disconnects ran.
    pub disconnects: Arc<AtomicUsize>,
    /// Lines written by connect (`connect <scope data> <id>`) and listeners (`<scope data> <event>`).
    pub log: Arc<Mutex<Vec<String>>>,
    /// What each connect does, in order; the last one repeats.
    pub plans: Arc<Mutex<Vec<Plan>>>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new(vec![Plan::Ok(Duration::from_millis(10))])
    }
}

impl Probe {
    /// A probe whose connects follow `plans`.
    pub fn new(plans: Vec<Plan>) -> Self {
        Self {
            connects: Arc::default(),
            disconnects: Arc::default(),
            log: Arc::default(),
            plans: Arc::new(Mutex::new(plans)),
        }
    }

    /// How many connects started.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// How many disconnects ran.
    pub fn disconnects(&self) -> usize {
        self.disconnects.load(Ordering::SeqCst)
    }

    /// A copy of the log.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// A spec for `id` whose connect follows the plans, with a `*` listener that logs, and a counting disconnect.
    pub fn spec(&self, id: &str, creds: Creds) -> Spec<Conn, Creds, &'static str> {
        let p = self.clone();
        let d = self.clone();
        let l = self.clone();
        Spec::new(id, creds, move |ctx| {
            let generation = p.connects.fetch_add(1, Ordering::SeqCst) + 1;
            p.log
                .lock()
                .unwrap()
                .push(format!("connect {} {}", ctx.scope().data(), ctx.id()));
            let plan = {
                let mut plans = p.plans.lock().unwrap();
                if plans.len() > 1 {
                    plans.remove(0)
                } else {
                    plans[0]
                }
            };
            async move {
                match plan {
                    Plan::Ok(delay) => {
                        tokio::time::sleep(delay).await;
                        Ok(Conn::new(generation))
                    }
                    Plan::Fail(delay) => {
                        tokio::time::sleep(delay).await;
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                    }
                    Plan::Hang => std::future::pending().await,
                }
            }
        })
        .disconnect(move |_conn| {
            d.disconnects.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .listener("*", move |ctx, event: &String| {
            l.log
                .lock()
                .unwrap()
                .push(format!("{} {} {event}", ctx.scope().data(), ctx.id()));
        })
    }
}

/// A registry with the default settings.
pub fn registry() -> Reg {
    Registry::new()
}

/// A registry with `config`.
pub fn registry_with(config: Config) -> Reg {
    Registry::with_config(config).unwrap()
}

/// A scope.
pub fn scope(id: &'static str, data: &'static str) -> Scope<&'static str> {
    Scope::new(id, data)
}

/// Lets the supervisor tasks run without moving the paused clock past anything that matters.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Whole seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
