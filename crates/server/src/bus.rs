//! The Bus: the one interface through which the server's own components (twin, ingest, web)
//! reach MQTT. Nothing in the server outside `runtime` talks to the broker directly for
//! messages, so the broker underneath can be swapped.
//!
//! [`EmbeddedBus`] calls our broker in-process through a [`broker::LocalClient`] (principal
//! `server:core`, a superuser): no sockets, no serialisation.
//!
//! An `ExternalBus` would slot in for an external MQTT cluster (EMQX, VerneMQ, rmqtt,
//! another devicecloud broker cluster): it would hold an MQTT client connection (the `client`
//! crate, over TLS, authenticated as `server:core` with a credential only the server has),
//! `publish` would send a PUBLISH and await its PUBACK (back-pressure from the cluster),
//! and `subscribe` would add a subscription on that connection and demultiplex incoming
//! PUBLISHes by filter into per-subscription channels (with a shared subscription,
//! `$share/devicecloud/...`, when several server instances run). The cluster would ask the
//! server who may connect through its HTTP auth webhook, answered by
//! [`crate::registry::Registry`] (the same `authenticate` call, with permissions exported as
//! topic filter lists). Revocation would use the cluster's admin API to kick clients instead
//! of `Broker::disconnect_principal`. Nothing above the Bus changes.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::Notify;

pub use broker::Message;
pub use codec::QoS;

/// Why the Bus could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the message bus is shut down")]
    Closed,
    #[error("invalid topic or filter {0:?}")]
    InvalidTopic(String),
}

pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the server publishes and subscribes. Object-safe: components hold an `Arc<dyn Bus>`.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message (routed like a client's: retained messages are stored).
    fn publish(&self, message: Message) -> BusFuture<'_, Result<(), BusError>>;

    /// Subscribes to `filter` (wildcards allowed). Retained messages matching it come first.
    /// Async because an external broker answers with a SUBACK.
    fn subscribe<'a>(&'a self, filter: &'a str)
    -> BusFuture<'a, Result<BusSubscription, BusError>>;
}

impl dyn Bus {
    /// Publishes `payload` to `topic`.
    pub async fn publish_to(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), BusError> {
        self.publish(
            Message::new(topic, payload)
                .with_qos(qos)
                .with_retain(retain),
        )
        .await
    }
}

/// The receiving end of one subscription; dropping it unsubscribes.
pub struct BusSubscription {
    filter: String,
    source: Box<dyn SubscriptionSource>,
}

/// What a Bus implementation provides per subscription.
pub trait SubscriptionSource: Send + 'static {
    /// The next message, or `None` once the bus shut down.
    fn recv(&mut self) -> BusFuture<'_, Option<Message>>;
}

impl BusSubscription {
    pub fn new(filter: impl Into<String>, source: Box<dyn SubscriptionSource>) -> BusSubscription {
        BusSubscription {
            filter: filter.into(),
            source,
        }
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The next message, or `None` once the bus shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.source.recv().await
    }
}

impl std::fmt::Debug for BusSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusSubscription")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// Messages one device may have waiting in one subscription of the server's components.
pub const DEFAULT_PER_DEVICE_QUEUE: usize = 1024;
/// Messages all devices together may have waiting in one subscription.
pub const DEFAULT_TOTAL_QUEUE: usize = 65_536;

/// What the bus dropped, for `/metrics`.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages dropped because their device had its share of a subscription's queue waiting.
    pub dropped_over_share: AtomicU64,
}

/// The Bus over our own broker, in-process.
///
/// Each subscription is drained at once into a [`FairQueue`] keyed by device: the component
/// (twin, ingest) takes messages round-robin across devices, and a device that has its share
/// waiting loses its own new messages, not other devices'. So one device flooding `state/...`
/// cannot cost another device its command confirmation.
pub struct EmbeddedBus {
    client: broker::LocalClient,
    per_device: usize,
    total: usize,
    counters: Arc<BusCounters>,
}

impl EmbeddedBus {
    /// A bus publishing as `server:{component}` through `broker`.
    pub fn new(broker: &broker::Broker, component: &str) -> EmbeddedBus {
        EmbeddedBus::with_limits(
            broker,
            component,
            DEFAULT_PER_DEVICE_QUEUE,
            DEFAULT_TOTAL_QUEUE,
        )
    }

    /// [`EmbeddedBus::new`] with `per_device` messages per device and `total` per subscription.
    pub fn with_limits(
        broker: &broker::Broker,
        component: &str,
        per_device: usize,
        total: usize,
    ) -> EmbeddedBus {
        EmbeddedBus {
            client: broker.local_client(&format!("server:{component}")),
            per_device: per_device.max(1),
            total: total.max(1),
            counters: Arc::new(BusCounters::default()),
        }
    }

    pub fn counters(&self) -> &Arc<BusCounters> {
        &self.counters
    }
}

/// The fairness key of a topic: the device id of `devices/{id}/...`, else the first level.
fn fairness_key(topic: &str) -> &str {
    match topic.strip_prefix("devices/") {
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => topic.split('/').next().unwrap_or(topic),
    }
}

/// Per-key FIFO queues served round-robin, bounded per key and in total.
#[derive(Debug, Default)]
struct FairState {
    queues: HashMap<Arc<str>, VecDeque<Message>>,
    /// Keys with something waiting, in serving order.
    ready: VecDeque<Arc<str>>,
    len: usize,
    closed: bool,
}

/// One subscription's fair queue, shared by the pump (broker side) and the component.
#[derive(Debug)]
struct FairQueue {
    state: Mutex<FairState>,
    notify: Notify,
    per_key: usize,
    total: usize,
    counters: Arc<BusCounters>,
}

impl FairQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, FairState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, message: Message) {
        {
            let mut state = self.lock();
            let key = fairness_key(&message.topic);
            let waiting = state.queues.get(key).map_or(0, VecDeque::len);
            if waiting >= self.per_key || state.len >= self.total {
                let dropped = self
                    .counters
                    .dropped_over_share
                    .fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        key,
                        waiting,
                        "a device sends faster than the server's components take its messages: dropping its excess"
                    );
                }
                return;
            }
            let key: Arc<str> = Arc::from(key);
            let queue = state.queues.entry(key.clone()).or_default();
            let was_empty = queue.is_empty();
            queue.push_back(message);
            if was_empty {
                state.ready.push_back(key);
            }
            state.len += 1;
        }
        self.notify.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Result<Message, ()>> {
        let mut state = self.lock();
        let Some(key) = state.ready.pop_front() else {
            return state.closed.then_some(Err(()));
        };
        let queue = state.queues.get_mut(&key)?;
        let message = queue.pop_front()?;
        if queue.is_empty() {
            state.queues.remove(&key);
        } else {
            state.ready.push_back(key);
        }
        state.len -= 1;
        Some(Ok(message))
    }

    async fn recv(&self) -> Option<Message> {
        loop {
            let notified = self.notify.notified();
            match self.pop() {
                Some(Ok(message)) => return Some(message),
                Some(Err(())) => return None,
                None => notified.await,
            }
        }
    }
}

impl Bus for EmbeddedBus {
    fn publish(&self, message: Message) -> BusFuture<'_, Result<(), BusError>> {
        if !proto::acl::is_valid_topic(&message.topic) {
            let topic = message.topic.to_string();
            return Box::pin(async move { Err(BusError::InvalidTopic(topic)) });
        }
        self.client.publish(message);
        Box::pin(async { Ok(()) })
    }

    fn subscribe<'a>(
        &'a self,
        filter: &'a str,
    ) -> BusFuture<'a, Result<BusSubscription, BusError>> {
        let result = if proto::acl::is_valid_filter(filter) {
            let mut subscription = self.client.subscribe(filter);
            let queue = Arc::new(FairQueue {
                state: Mutex::new(FairState::default()),
                notify: Notify::new(),
                per_key: self.per_device,
                total: self.total,
                counters: self.counters.clone(),
            });
            // The pump only moves messages, so the broker-side channel stays nearly empty and
            // the dropping decision is made here, per device.
            let pump = {
                let queue = queue.clone();
                tokio::spawn(async move {
                    while let Some(message) = subscription.recv().await {
                        queue.push(message);
                    }
                    queue.close();
                })
            };
            Ok(BusSubscription::new(
                filter,
                Box::new(EmbeddedSubscription { queue, pump }),
            ))
        } else {
            Err(BusError::InvalidTopic(filter.to_owned()))
        };
        Box::pin(async move { result })
    }
}

struct EmbeddedSubscription {
    queue: Arc<FairQueue>,
    pump: tokio::task::JoinHandle<()>,
}

impl SubscriptionSource for EmbeddedSubscription {
    fn recv(&mut self) -> BusFuture<'_, Option<Message>> {
        Box::pin(self.queue.recv())
    }
}

impl Drop for EmbeddedSubscription {
    /// Dropping the subscription unsubscribes: the pump owns the broker subscription.
    fn drop(&mut self) {
        self.pump.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(per_key: usize, total: usize) -> FairQueue {
        FairQueue {
            state: Mutex::new(FairState::default()),
            notify: Notify::new(),
            per_key,
            total,
            counters: Arc::new(BusCounters::default()),
        }
    }

    #[tokio::test]
    async fn devices_are_served_round_robin_and_a_flooder_loses_only_its_own_messages() {
        let q = queue(3, 100);
        for i in 0..10 {
            q.push(Message::new(format!("devices/noisy/state/n{i}"), "x"));
        }
        q.push(Message::new("devices/quiet/state/led", "y"));
        assert_eq!(q.counters.dropped_over_share.load(Ordering::Relaxed), 7);
        let first = q.recv().await.unwrap();
        let second = q.recv().await.unwrap();
        assert_eq!(&*first.topic, "devices/noisy/state/n0");
        assert_eq!(
            &*second.topic, "devices/quiet/state/led",
            "the quiet device's message comes next, not after the flood"
        );
        assert_eq!(&*q.recv().await.unwrap().topic, "devices/noisy/state/n1");
        assert_eq!(&*q.recv().await.unwrap().topic, "devices/noisy/state/n2");
        q.close();
        assert!(q.recv().await.is_none());
    }

    #[test]
    fn the_total_bounds_all_devices_together() {
        let q = queue(10, 4);
        for i in 0..6 {
            q.push(Message::new(format!("devices/d{i}/telemetry/t"), "1"));
        }
        assert_eq!(q.lock().len, 4);
        assert_eq!(q.counters.dropped_over_share.load(Ordering::Relaxed), 2);
        assert_eq!(fairness_key("devices/a/b/c"), "a");
        assert_eq!(fairness_key("$SYS/x"), "$SYS");
    }
}
