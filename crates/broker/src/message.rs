//! Messages: the public [`Message`] the in-process API speaks, and [`Publication`], the
//! routed form shared (behind one `Arc`) by every subscriber a PUBLISH fans out to.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use codec::{ByteStr, ProtocolVersion, Publish, PublishFrame, PublishProperties, QoS};
use tokio::time::Instant;

/// An application message, as [`crate::LocalClient`] publishes and receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties: user properties, content type, response topic, correlation data,
    /// message expiry interval, payload format. Topic alias and subscription identifiers are
    /// connection-level and ignored here.
    pub properties: PublishProperties,
}

impl Message {
    /// A QoS 0, non-retained message without properties.
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    pub fn with_qos(mut self, qos: QoS) -> Message {
        self.qos = qos;
        self
    }

    pub fn with_retain(mut self, retain: bool) -> Message {
        self.retain = retain;
        self
    }
}

/// A message being routed. Immutable once built; cloned only as an `Arc`.
#[derive(Debug)]
pub struct Publication {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Without topic alias and subscription identifiers (those are per connection).
    pub props: PublishProperties,
    /// From the message expiry interval; `None` = never expires.
    pub expires_at: Option<Instant>,
    /// The publishing session's id, for No Local; 0 for in-process publishers.
    pub origin: u64,
    /// The journal's id for this message once some persistent session queued it.
    pub store_id: OnceLock<u64>,
    topic_arc: OnceLock<Arc<str>>,
    /// Set by the router when the message goes to more than one session: then each
    /// (protocol family, QoS) variant of the PUBLISH is encoded once and copied per
    /// subscriber, with DUP, RETAIN, the packet id and the topic alias patched in by codec.
    fanout: AtomicBool,
    /// `None` inside: encoding failed (the connection then encodes the packet itself).
    frames: OnceLock<Box<[OnceLock<Option<PublishFrame>>; 6]>>,
}

impl Publication {
    pub fn new(
        topic: ByteStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut props: PublishProperties,
        origin: u64,
    ) -> Publication {
        props.topic_alias = None;
        props.subscription_identifiers = Vec::new();
        let expires_at = props
            .message_expiry_interval
            .and_then(|s| Instant::now().checked_add(std::time::Duration::from_secs(u64::from(s))));
        Publication {
            topic,
            payload,
            qos,
            retain,
            props,
            expires_at,
            origin,
            store_id: OnceLock::new(),
            topic_arc: OnceLock::new(),
            fanout: AtomicBool::new(false),
            frames: OnceLock::new(),
        }
    }

    pub fn set_fanout(&self) {
        self.fanout.store(true, Ordering::Relaxed);
    }

    pub fn is_fanout(&self) -> bool {
        self.fanout.load(Ordering::Relaxed)
    }

    /// The shared encoded PUBLISH for `version`'s family at `qos`, built on first use.
    /// Per-delivery properties (message expiry, subscription identifiers) are not in it.
    pub fn frame(&self, version: ProtocolVersion, qos: QoS) -> Option<&PublishFrame> {
        let v5 = version.is_v5();
        let frames = self.frames.get_or_init(Default::default);
        frames[usize::from(v5) * 3 + usize::from(qos.as_u8())]
            .get_or_init(|| {
                let mut template = Publish::new(self.topic.clone(), self.payload.clone());
                template.qos = qos;
                if v5 {
                    template.properties = self.props.clone();
                }
                PublishFrame::new(template, version).ok()
            })
            .as_ref()
    }

    pub fn from_message(msg: Message, origin: u64) -> Publication {
        let topic = ByteStr::from(msg.topic.clone());
        let mut p = Publication::new(
            topic,
            msg.payload,
            msg.qos,
            msg.retain,
            msg.properties,
            origin,
        );
        let _ = p.topic_arc.set(msg.topic);
        p.origin = origin;
        p
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left of the message expiry interval, rounded up (what a forwarded PUBLISH
    /// carries, spec 3.3.2.3.3); `None` if the message does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }

    pub fn topic_arc(&self) -> Arc<str> {
        self.topic_arc
            .get_or_init(|| Arc::from(self.topic.as_str()))
            .clone()
    }

    /// The public form, as delivered to a local subscriber.
    pub fn to_message(&self, qos: QoS, retain: bool) -> Message {
        let mut properties = self.props.clone();
        if self.expires_at.is_some() {
            properties.message_expiry_interval = self.remaining_expiry(Instant::now());
        }
        Message {
            topic: self.topic_arc(),
            payload: self.payload.clone(),
            qos,
            retain,
            properties,
        }
    }

    /// A copy sharing topic and payload but with its own journal id: for re-sending a
    /// long-lived message (a retained one) whose journal record may have been dropped since.
    pub fn fresh(&self) -> Publication {
        self.with_body(self.topic.clone(), self.payload.clone())
    }

    /// Copies topic and payload out of the (possibly much larger) receive buffer they point
    /// into, for messages kept long-term (retained, persisted) so they don't pin that buffer.
    pub fn detached(&self) -> Publication {
        self.with_body(
            ByteStr::from(self.topic.as_str()),
            Bytes::copy_from_slice(&self.payload),
        )
    }

    /// The same message with the given topic and payload, and none of the per-copy caches.
    fn with_body(&self, topic: ByteStr, payload: Bytes) -> Publication {
        Publication {
            topic,
            payload,
            qos: self.qos,
            retain: self.retain,
            props: self.props.clone(),
            expires_at: self.expires_at,
            origin: self.origin,
            store_id: OnceLock::new(),
            topic_arc: OnceLock::new(),
            fanout: AtomicBool::new(false),
            frames: OnceLock::new(),
        }
    }
}
