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

use std::{future::Future, pin::Pin};

use bytes::Bytes;

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

/// The Bus over our own broker, in-process.
pub struct EmbeddedBus {
    client: broker::LocalClient,
}

impl EmbeddedBus {
    /// A bus publishing as `server:{component}` through `broker`.
    pub fn new(broker: &broker::Broker, component: &str) -> EmbeddedBus {
        EmbeddedBus {
            client: broker.local_client(&format!("server:{component}")),
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
            let subscription = self.client.subscribe(filter);
            Ok(BusSubscription::new(
                filter,
                Box::new(EmbeddedSubscription(subscription)),
            ))
        } else {
            Err(BusError::InvalidTopic(filter.to_owned()))
        };
        Box::pin(async move { result })
    }
}

struct EmbeddedSubscription(broker::LocalSubscription);

impl SubscriptionSource for EmbeddedSubscription {
    fn recv(&mut self) -> BusFuture<'_, Option<Message>> {
        Box::pin(self.0.recv())
    }
}
