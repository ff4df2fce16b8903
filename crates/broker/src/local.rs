//! In-process clients: the server's own components publish and subscribe through the broker
//! without a socket, with superuser rights.

use std::sync::{Arc, Weak};

use codec::{QoS, SubscribeOptions};
use tokio::sync::mpsc;

use crate::{
    broker::Inner,
    message::{Message, Publication},
    session::Session,
};

/// Messages buffered per in-process subscription beyond the retained ones delivered at
/// subscribe time; a subscriber that falls further behind loses messages (counted as
/// dropped) rather than slowing the broker down.
const LOCAL_CAPACITY: usize = 4096;

/// A handle for publishing and subscribing in-process (see [`crate::Broker::local_client`]).
#[derive(Clone)]
pub struct LocalClient {
    inner: Arc<Inner>,
    principal: Arc<str>,
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient")
            .field("principal", &self.principal)
            .finish()
    }
}

impl LocalClient {
    pub(crate) fn new(inner: Arc<Inner>, principal: &str) -> LocalClient {
        LocalClient {
            inner,
            principal: Arc::from(principal),
        }
    }

    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// Routes `msg` like a client PUBLISH (a retained message is stored, an empty retained
    /// payload deletes). Invalid topics (empty, wildcards, NUL, over the topic limits) are
    /// logged and dropped.
    pub fn publish(&self, msg: Message) {
        if let Err(e) = codec::topic::validate_topic_name(&msg.topic) {
            tracing::warn!(principal = %self.principal, topic = %msg.topic, error = %e, "in-process publish dropped");
            return;
        }
        if let Err(e) = self.inner.check_topic_limits(&msg.topic) {
            tracing::warn!(principal = %self.principal, error = %e, "in-process publish dropped");
            return;
        }
        self.inner.publish(Publication::from_message(msg, 0));
    }

    /// Subscribes to `filter` (wildcards and `$share/group/...` allowed). Matching retained
    /// messages are delivered first (with `retain` set). Dropping the subscription
    /// unsubscribes. An invalid filter yields a subscription that ends at once.
    pub fn subscribe(&self, filter: &str) -> LocalSubscription {
        let valid = codec::topic::validate_topic_filter(filter)
            .map_err(|e| e.to_string())
            .and_then(|()| self.inner.check_topic_limits(filter));
        if let Err(e) = valid {
            tracing::warn!(principal = %self.principal, filter, error = %e, "in-process subscribe refused");
            let (_, rx) = mpsc::channel(1);
            return LocalSubscription {
                rx,
                inner: Weak::new(),
                session: None,
                filter: filter.to_string(),
            };
        }
        let spec = crate::shared::FilterSpec::parse(filter);
        let retained = if spec.group.is_none() {
            self.inner.router.retained_matching(spec.filter)
        } else {
            0
        };
        let (tx, rx) = mpsc::channel(LOCAL_CAPACITY + retained);
        let id = self.inner.next_id();
        let client_id: Arc<str> = Arc::from(format!("$local/{}/{id}", self.principal));
        let session = Arc::new(Session::new_local(id, client_id, tx));
        // Same ownership rules as network sessions (its `$share` groups are its own).
        session.lock().owner = Some(self.principal.clone());
        let options = SubscribeOptions::qos(QoS::ExactlyOnce);
        self.inner
            .router
            .subscribe(&session, filter, options, None, true);
        LocalSubscription {
            rx,
            inner: Arc::downgrade(&self.inner),
            session: Some(session),
            filter: filter.to_string(),
        }
    }
}

/// A stream of messages for one in-process subscription.
#[derive(Debug)]
pub struct LocalSubscription {
    rx: mpsc::Receiver<Message>,
    inner: Weak<Inner>,
    session: Option<Arc<Session>>,
    filter: String,
}

impl LocalSubscription {
    /// The next message; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is ready.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        if let (Some(inner), Some(session)) = (self.inner.upgrade(), self.session.take()) {
            inner.router.unsubscribe(&session, &self.filter);
        }
    }
}
