//! Will messages (spec 3.1.2.5, 3.1.3.2): published when a connection ends without a normal
//! DISCONNECT (or with v5 DISCONNECT 0x04), after the v5 Will Delay Interval, unless the
//! client reconnects to the session first. A delayed will is also sent when its session
//! ends before the delay elapses, and at broker shutdown wills are sent at once.
//!
//! The will topic is checked against the client's ACL at CONNECT: a will the client could not
//! publish refuses the connection (v5 CONNACK 0x87 Not authorized, v3 return code 5), so the
//! client learns about it instead of the will silently vanishing later.

use std::{sync::Arc, time::Duration};

use codec::LastWill;

use crate::{
    broker::Inner,
    message::Publication,
    session::{PendingWill, Session},
};

pub fn publication(will: &LastWill, origin: u64) -> Publication {
    Publication::new(
        will.topic.clone(),
        will.payload.clone(),
        will.qos,
        will.retain,
        will.properties.to_publish_properties(),
        origin,
    )
}

/// Publishes `msg` after `delay` seconds unless the session is resumed (its generation
/// changes) or ended first (then `end_session` publishes it).
pub fn schedule(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    generation: u64,
    msg: Arc<Publication>,
    delay: u32,
) {
    let weak_inner = Arc::downgrade(inner);
    let weak_session = Arc::downgrade(session);
    let mut st = session.lock();
    if st.ended || st.generation != generation {
        return;
    }
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
        let (Some(inner), Some(session)) = (weak_inner.upgrade(), weak_session.upgrade()) else {
            return;
        };
        let will = {
            let mut st = session.lock();
            if st.generation != generation || st.conn.is_some() {
                return;
            }
            st.pending_will.take()
        };
        if let Some(w) = will {
            inner.router.publish(w.msg);
        }
    });
    st.pending_will = Some(PendingWill {
        abort: task.abort_handle(),
        msg,
    });
}
