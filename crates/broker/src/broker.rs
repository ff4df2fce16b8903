//! The broker handle: configuration, the session table, and the entry points the listeners
//! and the server call.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use codec::ReasonCode;
use tokio::{io::AsyncRead, io::AsyncWrite, sync::Notify, time::Instant};

use crate::{
    auth::{Authenticator, ClientCert, Identity, Transport},
    local::LocalClient,
    message::Publication,
    persist::{Journal, PersistError, Record},
    retained::RetainQuota,
    router::Router,
    session::{ConnLink, Inflight, Outgoing, QueueLimits, Session, Stage},
    shared::FilterSpec,
    stats::{Counters, Stats},
};

/// The session table: client id -> session, with how many sessions each principal owns
/// (for `max_sessions_per_principal`), kept in step by `insert` and `remove`.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    pub map: HashMap<Arc<str>, Arc<Session>>,
    owned: HashMap<Arc<str>, usize>,
}

impl SessionTable {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn owned_by(&self, principal: &str) -> usize {
        self.owned.get(principal).copied().unwrap_or(0)
    }

    /// Adds `session` under `client` (its owner is read from its state), replacing and
    /// returning any session there.
    pub fn insert(&mut self, client: Arc<str>, session: Arc<Session>) -> Option<Arc<Session>> {
        if let Some(owner) = session.lock().owner.clone() {
            *self.owned.entry(owner).or_default() += 1;
        }
        let old = self.map.insert(client, session)?;
        self.forget_owner(&old);
        Some(old)
    }

    pub fn remove(&mut self, client: &str) -> Option<Arc<Session>> {
        let old = self.map.remove(client)?;
        self.forget_owner(&old);
        Some(old)
    }

    fn forget_owner(&mut self, session: &Session) {
        let Some(owner) = session.lock().owner.clone() else {
            return;
        };
        if let Some(n) = self.owned.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.owned.remove(&owner);
            }
        }
    }
}

/// Broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where sessions and retained messages are persisted; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub limits: Limits,
    /// How often `$SYS/broker/...` topics are published; zero disables them.
    pub sys_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: None,
            limits: Limits::default(),
            sys_interval: Duration::from_secs(10),
        }
    }
}

/// Resource limits. Every one of them bounds what a single client can make the broker hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Network connections at once; more are refused (v5 CONNACK 0x97, v3 "server unavailable").
    pub max_connections: usize,
    /// Largest packet accepted (v5 CONNACK advertises it; bigger => DISCONNECT 0x95).
    pub max_packet_size: u32,
    /// In-flight QoS 1/2 messages per client in each direction: caps the client's Receive
    /// Maximum for outbound messages and is advertised as ours for inbound ones.
    pub receive_maximum: u16,
    /// QoS 1/2 messages queued per session beyond the in-flight window (slow-consumer
    /// policy: see the `session` module).
    pub max_queued_messages: usize,
    /// Bytes queued per session, any QoS; QoS 0 messages to connected clients are bounded
    /// by this alone, so that bursts of small messages are absorbed.
    pub max_queued_bytes: usize,
    /// Time allowed from TCP accept to a complete CONNECT (and for the authenticator).
    pub connect_timeout: Duration,
    /// Keep alive cap in seconds for v5 clients (sent as Server Keep Alive when exceeded or 0).
    pub max_keepalive: u16,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Cap on a session's expiry interval, seconds. Applies to MQTT 3.1/3.1.1 persistent
    /// sessions (`clean session = 0`, which the spec lets live forever) as well.
    pub max_session_expiry: u32,
    /// Levels (`/`-separated) in a topic name or filter (of a shared one, after
    /// `$share/{group}/`); more are refused (v5 PUBACK or DISCONNECT 0x90 / SUBACK 0x8F,
    /// v3 close / SUBACK 0x80).
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter (including a `$share/{group}/` prefix); refused like
    /// `max_topic_levels`.
    pub max_topic_length: usize,
    /// Sessions (connected or persisted) one principal may hold; a CONNECT that would
    /// create one more is refused (v5 CONNACK 0x97, v3 "server unavailable").
    pub max_sessions_per_principal: usize,
    /// Retained messages one principal may have stored; a retained PUBLISH beyond it is
    /// refused (v5 PUBACK 0x97, v3 dropped and counted).
    pub max_retained_per_principal: usize,
    /// Bytes (topic + payload) of one principal's retained messages; refused likewise.
    pub max_retained_bytes_per_principal: usize,
    /// Largest CONNECT packet, checked before the authenticator runs (the larger
    /// `max_packet_size` applies only once the client is authenticated).
    pub max_connect_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_packet_size: 1 << 20,
            receive_maximum: 256,
            max_queued_messages: 1000,
            // About 10,000 small messages (each costs ~500 B with its bookkeeping), enough
            // for a burst from several fast publishers; 64 stuck subscribers hold 1 GiB only
            // together, and each one's drops are counted and logged.
            max_queued_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 3600,
            topic_alias_maximum: 64,
            max_session_expiry: 30 * 24 * 3600,
            // devicecloud's own topics have at most 6 levels; AWS IoT allows 8. 32 leaves
            // room for any sane naming and bounds every walk over levels.
            max_topic_levels: 32,
            max_topic_length: 1024,
            // A device needs 1, a user a few (browser tabs, scripts).
            max_sessions_per_principal: 16,
            // 1,000 principals at the byte cap hold 256 MiB.
            max_retained_per_principal: 100,
            max_retained_bytes_per_principal: 256 * 1024,
            // User name, password (a token or certificate-sized secret), will and
            // properties fit easily.
            max_connect_size: 64 * 1024,
        }
    }
}

/// What the listener knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub transport: Transport,
    pub client_cert: Option<ClientCert>,
    /// Already authenticated (e.g. MQTT-over-WebSocket on the web port with a dashboard
    /// session): the Authenticator is skipped.
    pub preauthenticated: Option<Identity>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, transport: Transport) -> ConnInfo {
        ConnInfo {
            peer,
            transport,
            client_cert: None,
            preauthenticated: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("loading the broker's persisted state failed: {0}")]
    Load(String),
}

/// The broker: a cheap handle (`Arc`) to shared state.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) struct Inner {
    pub config: BrokerConfig,
    pub auth: Arc<dyn Authenticator>,
    pub router: Router,
    pub counters: Arc<Counters>,
    pub journal: Option<Arc<Journal>>,
    pub sessions: Mutex<SessionTable>,
    next_id: AtomicU64,
    /// Network connections being served (including ones still in CONNECT).
    pub connections: AtomicUsize,
    pub idle: Notify,
    pub started: Instant,
    pub shutting_down: AtomicBool,
}

impl Broker {
    /// Opens the broker, recovering persisted sessions and retained messages from
    /// `config.data_dir`. Must be called inside a Tokio runtime.
    pub async fn open(
        config: BrokerConfig,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Broker, BrokerError> {
        let counters = Arc::new(Counters::default());
        let (journal, loaded) = match &config.data_dir {
            Some(dir) => {
                let dir = dir.clone();
                let (j, l) = tokio::task::spawn_blocking(move || Journal::open(&dir))
                    .await
                    .map_err(|e| BrokerError::Load(e.to_string()))??;
                (Some(Arc::new(j)), Some(l))
            }
            None => (None, None),
        };
        let router = Router::new(
            counters.clone(),
            journal.clone(),
            QueueLimits {
                messages: config.limits.max_queued_messages,
                bytes: config.limits.max_queued_bytes,
            },
            RetainQuota {
                max_count: config.limits.max_retained_per_principal,
                max_bytes: config.limits.max_retained_bytes_per_principal,
            },
        );
        let inner = Arc::new(Inner {
            config,
            auth,
            router,
            counters,
            journal,
            sessions: Mutex::new(SessionTable::default()),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        });
        if let Some(loaded) = loaded {
            inner.restore(loaded);
        }
        crate::sys::start(&inner);
        Ok(Broker { inner })
    }

    /// Runs one client connection to completion; the stream is already past any
    /// TLS/WebSocket handshake.
    ///
    /// Returns a `'static` future (not an `async fn`) so that the spawned task stays small.
    pub fn serve_connection<S>(
        &self,
        stream: S,
        info: ConnInfo,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        crate::connection::serve(self.inner.clone(), stream, info)
    }

    /// An in-process client with superuser rights.
    pub fn local_client(&self, principal: &str) -> LocalClient {
        LocalClient::new(self.inner.clone(), principal)
    }

    /// Disconnects every connection whose identity has this principal (v5 DISCONNECT 0x98
    /// Administrative action). Returns how many were told to close.
    pub fn disconnect_principal(&self, principal: &str) -> usize {
        self.inner
            .kick_where(ReasonCode::AdministrativeAction, |p| p == principal)
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let mut s = i.counters.snapshot();
        s.sessions = i.lock_sessions().len() as u64;
        s.retained_messages = i.router.retained_count() as u64;
        s.subscriptions = i.router.subscription_count() as u64;
        s.uptime_secs = i.started.elapsed().as_secs();
        s
    }

    /// Disconnects every client (v5 DISCONNECT 0x8B; their wills are published), waits up to
    /// 5 s for the connections to finish, and flushes the journal.
    pub async fn shutdown(&self) {
        let i = &self.inner;
        i.shutting_down.store(true, Ordering::SeqCst);
        i.kick_where(ReasonCode::ServerShuttingDown, |_| true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while i.connections.load(Ordering::SeqCst) > 0 {
            let idle = i.idle.notified();
            if i.connections.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    remaining = i.connections.load(Ordering::SeqCst),
                    "connections still open 5 s after shutdown was requested"
                );
                break;
            }
        }
        if let Some(j) = i.journal.clone() {
            let _ = tokio::task::spawn_blocking(move || j.close()).await;
        }
    }
}

impl Inner {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn lock_sessions(&self) -> MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn journal_append(&self, rec: Record) -> u64 {
        match &self.journal {
            Some(j) => j.append(rec),
            None => 0,
        }
    }

    /// Tells every connection whose principal satisfies `pred` to disconnect with `reason`.
    pub fn kick_where(&self, reason: ReasonCode, pred: impl Fn(&str) -> bool) -> usize {
        let sessions: Vec<Arc<Session>> = self.lock_sessions().map.values().cloned().collect();
        let mut n = 0;
        for s in sessions {
            let mut st = s.lock();
            if let Some(c) = &mut st.conn
                && pred(&c.principal)
            {
                c.kick = Some(reason);
                c.signal.notify_one();
                n += 1;
            }
        }
        n
    }

    fn restore(self: &Arc<Self>, loaded: crate::persist::Loaded) {
        for (msg, owner) in loaded.retained {
            self.router.restore_retained(msg, owner);
        }
        for (client, ls) in loaded.sessions {
            let session = Arc::new(Session::new(self.next_id(), client.clone()));
            {
                let mut st = session.lock();
                // Journals from before v3 sessions were capped hold "never expires".
                st.expiry = ls.expiry.min(self.config.limits.max_session_expiry);
                st.owner = ls.owner;
                st.persistent = true;
                st.inbound_qos2 = ls.inbound_qos2;
                for e in ls.entries {
                    let out = Outgoing {
                        msg: e.msg,
                        qos: e.qos,
                        retain: e.retain,
                        sub_ids: e.sub_ids,
                        entry_id: e.entry,
                    };
                    match e.pid {
                        Some(pid) => {
                            let stage = if e.released {
                                Stage::Released
                            } else {
                                Stage::Published
                            };
                            st.inflight.push_back(Inflight { pid, out, stage });
                        }
                        None => st.queue.push_back(out),
                    }
                }
                st.next_pid = st.inflight.back().map(|i| i.pid).unwrap_or(0);
                st.subs = ls
                    .subs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            }
            for (filter, rec) in &ls.subs {
                self.router
                    .subscribe(&session, filter, rec.options, rec.sub_id, false);
            }
            self.lock_sessions().insert(client, session.clone());
            self.schedule_expiry(&session, 0);
        }
    }

    /// Starts the expiry timer of an offline session (generation `generation`).
    pub fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        let expiry = session.lock().expiry;
        if expiry == u32::MAX {
            return;
        }
        let weak = Arc::downgrade(self);
        let session = Arc::downgrade(session);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
            if let (Some(inner), Some(session)) = (weak.upgrade(), session.upgrade()) {
                inner.end_session(&session, generation);
            }
        });
    }

    /// Discards a session: its subscriptions, queue and persisted state.
    pub fn end_session(&self, session: &Arc<Session>, generation: u64) {
        {
            // Decided under the table lock so that a client reconnecting right now either
            // resumes the session before this (and it stays) or gets a new one after.
            let mut map = self.lock_sessions();
            {
                let st = session.lock();
                if st.conn.is_some() || st.generation != generation || st.ended {
                    return;
                }
            }
            if map
                .map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                map.remove(&session.client_id);
            }
            session.lock().ended = true;
        }
        self.end_session_detached(session);
    }

    /// Connects `client_id` to its session (resuming or creating it) for `identity`, taking
    /// it over from any connection that holds it. Returns the session and whether it was
    /// resumed.
    ///
    /// One owner per session: a session belongs to the principal that created it. Another
    /// principal can neither take it over, resume it nor discard it with a clean start
    /// (refused with 0x85 "client identifier not valid"). A session recovered from a journal
    /// that predates owners is never resumed: the first CONNECT for its client id discards
    /// it and starts afresh, as with a clean start. A resumed session's subscriptions are
    /// checked against the principal's current permissions (see `revoke_denied`).
    pub fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry: u32,
        link: ConnLink,
        identity: &Identity,
    ) -> Result<(Arc<Session>, bool), (ReasonCode, String)> {
        let persistent = self.journal.is_some() && expiry > 0;
        let generation = link.generation;
        let principal = link.principal.clone();
        let mut link = Some(link);
        let mut map = self.lock_sessions();
        let existing = map.map.get(client_id).cloned();
        let existing_owner = existing.as_ref().map(|s| s.lock().owner.clone());
        let mine = match &existing_owner {
            Some(Some(owner)) if *owner != principal => {
                drop(map);
                Counters::add(&self.counters.client_id_refused, 1);
                return Err((
                    ReasonCode::ClientIdentifierNotValid,
                    format!(
                        "client id '{client_id}' is in use by another principal; connect with a different client id"
                    ),
                ));
            }
            Some(Some(_)) => true,
            // A legacy session without an owner: discarded below.
            Some(None) => false,
            None => false,
        };
        let resumes = mine && !clean_start;
        if !resumes {
            // A new session for this principal (replacing its own counts as none).
            let held = map.owned_by(&principal) - usize::from(mine);
            let max = self.config.limits.max_sessions_per_principal;
            if held >= max {
                drop(map);
                Counters::add(&self.counters.session_limit_exceeded, 1);
                return Err((
                    ReasonCode::QuotaExceeded,
                    format!(
                        "{principal} already holds {held} sessions, the limit (max_sessions_per_principal) is {max}; reuse a client id or let old sessions expire"
                    ),
                ));
            }
        }
        let mut ended = None;
        let resumed = match existing {
            Some(s) if resumes => {
                let mut st = s.lock();
                if let Some(old) = &st.conn {
                    old.signal.notify_one();
                }
                if let Some(w) = st.pending_will.take() {
                    // Reconnected within the will delay: the will is not sent (MQTT-3.1.3-9).
                    w.abort.abort();
                }
                st.generation = generation;
                st.conn = link.take();
                s.online.store(true, Ordering::Relaxed);
                if st.persistent && !persistent {
                    st.persistent = false;
                    self.journal_append(Record::SessionEnd {
                        client: client_id.clone(),
                    });
                } else if persistent && (!st.persistent || st.expiry != expiry) {
                    self.journal_session(client_id, expiry, &principal);
                    if !st.persistent {
                        for (filter, rec) in &st.subs {
                            self.journal_append(Record::Sub {
                                client: client_id.clone(),
                                filter: filter.clone(),
                                rec: rec.clone(),
                            });
                        }
                    }
                    st.persistent = true;
                }
                st.expiry = expiry;
                drop(st);
                Some(s)
            }
            Some(old) => {
                {
                    // Unlinking tells the old connection it was taken over.
                    let mut st = old.lock();
                    if let Some(c) = st.conn.take() {
                        c.signal.notify_one();
                    }
                    old.online.store(false, Ordering::Relaxed);
                }
                if !mine {
                    tracing::info!(client = %client_id, principal = %principal, "discarding a recovered session without a recorded owner");
                }
                ended = Some(old);
                None
            }
            None => None,
        };
        let session = match resumed {
            Some(s) => {
                drop(map);
                self.revoke_denied(&s, identity);
                return Ok((s, true));
            }
            None => {
                let s = Arc::new(Session::new(self.next_id(), client_id.clone()));
                {
                    let mut st = s.lock();
                    st.generation = generation;
                    st.conn = link.take();
                    st.expiry = expiry;
                    st.persistent = persistent;
                    st.owner = Some(principal.clone());
                }
                s.online.store(true, Ordering::Relaxed);
                map.insert(client_id.clone(), s.clone());
                s
            }
        };
        drop(map);
        if let Some(old) = ended {
            // Clean start: the old session is discarded (its will, if delayed, goes now).
            self.end_session_detached(&old);
        }
        if persistent {
            self.journal_session(client_id, expiry, &principal);
        }
        Ok((session, false))
    }

    /// Journals a persistent session's expiry and owner.
    fn journal_session(&self, client: &Arc<str>, expiry: u32, owner: &Arc<str>) {
        self.journal_append(Record::Session {
            client: client.clone(),
            expiry,
        });
        self.journal_append(Record::Owner {
            client: client.clone(),
            principal: owner.clone(),
        });
    }

    /// Removes the subscriptions of a resumed session that `identity` may no longer hold
    /// (its permissions changed since they were made, possibly before a restart), and the
    /// queued or in-flight messages it may no longer read.
    fn revoke_denied(&self, session: &Arc<Session>, identity: &Identity) {
        let permissions = &identity.permissions;
        let denied: Vec<String> = {
            let mut st = session.lock();
            let denied: Vec<String> = st
                .subs
                .keys()
                .filter(|raw| !permissions.may_subscribe(FilterSpec::parse(raw).filter))
                .cloned()
                .collect();
            for raw in &denied {
                st.subs.remove(raw);
                if st.persistent {
                    self.journal_append(Record::Unsub {
                        client: session.client_id.clone(),
                        filter: raw.clone(),
                    });
                }
            }
            denied
        };
        if denied.is_empty() {
            return;
        }
        Counters::add(&self.counters.subscriptions_revoked, denied.len() as u64);
        tracing::info!(client = %session.client_id, principal = %identity.principal, filters = ?denied, "removed restored subscriptions the principal may no longer hold");
        self.router.unsubscribe_all(session, denied.iter());
        // After the unsubscribe, so nothing routed through a removed filter stays behind.
        let mut st = session.lock();
        let mut done = Vec::new();
        st.queue.retain(|out| {
            let keep = permissions.may_subscribe(&out.msg.topic);
            if !keep && out.entry_id != 0 {
                done.push(out.entry_id);
            }
            keep
        });
        st.inflight.retain(|i| {
            let keep = permissions.may_subscribe(&i.out.msg.topic);
            if !keep && i.out.entry_id != 0 {
                done.push(i.out.entry_id);
            }
            keep
        });
        for entry in done {
            self.journal_append(Record::Done {
                client: session.client_id.clone(),
                entry,
            });
        }
    }

    /// Checks a topic name or filter against `max_topic_levels` (for `$share/{group}/{filter}`,
    /// the levels of `filter`) and `max_topic_length` (the whole string); counted in
    /// `topic_limit_exceeded` when refused.
    pub fn check_topic_limits(&self, topic: &str) -> Result<(), String> {
        let limits = &self.config.limits;
        let levels_of = codec::topic::parse_shared(topic).map_or(topic, |s| s.filter);
        codec::topic::check_limits(topic, usize::MAX, limits.max_topic_length)
            .and_then(|()| {
                codec::topic::check_limits(levels_of, limits.max_topic_levels, usize::MAX)
            })
            .map_err(|e| {
                Counters::add(&self.counters.topic_limit_exceeded, 1);
                e.to_string()
            })
    }

    /// Like [`Inner::end_session`] for a session already replaced in the table.
    fn end_session_detached(&self, session: &Arc<Session>) {
        let (subs, persistent, will) = {
            let mut st = session.lock();
            st.ended = true;
            st.queue.clear();
            st.inflight.clear();
            (
                std::mem::take(&mut st.subs),
                st.persistent,
                st.pending_will.take(),
            )
        };
        // A will still waiting for its delay is sent when the session ends (spec 3.1.3.2.2).
        if let Some(w) = will {
            w.abort.abort();
            self.router.publish(w.msg);
        }
        self.router.unsubscribe_all(session, subs.keys());
        if persistent {
            self.journal_append(Record::SessionEnd {
                client: session.client_id.clone(),
            });
        }
    }

    /// Publishes a message on behalf of the broker or a will.
    pub fn publish(&self, msg: Publication) -> u64 {
        Counters::add(&self.counters.messages_received, 1);
        self.router.publish(Arc::new(msg))
    }
}
