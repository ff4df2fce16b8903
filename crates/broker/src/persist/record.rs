//! The journal's record format: a file starts with `MAGIC`; each record is its body's length
//! (u32 LE), the body's FNV-1a checksum (u32 LE), then the body: a tag byte and the fields
//! (integers little-endian, strings and byte strings as u32 length + bytes).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use codec::{ByteStr, PublishProperties, QoS, RetainHandling, SubscribeOptions};
use tokio::time::Instant;

use crate::{message::Publication, session::SubRecord};

pub(super) const MAGIC: &[u8; 8] = b"DCJRNL01";

/// One change to the persisted state.
#[derive(Debug, Clone)]
pub enum Record {
    Session {
        client: Arc<str>,
        expiry: u32,
    },
    SessionEnd {
        client: Arc<str>,
    },
    Sub {
        client: Arc<str>,
        filter: String,
        rec: SubRecord,
    },
    Unsub {
        client: Arc<str>,
        filter: String,
    },
    Msg {
        id: u64,
        msg: Arc<Publication>,
    },
    Enq {
        client: Arc<str>,
        entry: u64,
        msg: u64,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
    },
    Sent {
        client: Arc<str>,
        entry: u64,
        pid: u16,
    },
    Released {
        client: Arc<str>,
        entry: u64,
    },
    Done {
        client: Arc<str>,
        entry: u64,
    },
    /// `owner`: the principal whose retained quota it counts against (none for the
    /// broker's own messages and for journals written before quotas existed).
    Retain {
        msg: Arc<Publication>,
        owner: Option<Arc<str>>,
    },
    Unretain {
        topic: String,
    },
    InQos2 {
        client: Arc<str>,
        pid: u16,
    },
    InQos2Done {
        client: Arc<str>,
        pid: u16,
    },
    /// The principal that owns a persistent session (written right after its first
    /// `Session` record); only that principal may resume it.
    Owner {
        client: Arc<str>,
        principal: Arc<str>,
    },
}

pub(super) fn checksum(data: &[u8]) -> u32 {
    // FNV-1a: detects torn writes and bit rot well enough for a local journal.
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

pub(super) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
    fn opts(&mut self, o: &SubscribeOptions) {
        let v = o.qos.as_u8()
            | (u8::from(o.no_local) << 2)
            | (u8::from(o.retain_as_published) << 3)
            | ((o.retain_handling as u8) << 4);
        self.u8(v);
    }
    fn msg(&mut self, m: &Publication) {
        self.bytes(m.topic.as_bytes());
        self.bytes(&m.payload);
        self.u8(m.qos.as_u8() | (u8::from(m.retain) << 2));
        let now = Instant::now();
        let expires = m
            .expires_at
            .map(|t| unix_ms_now() + t.saturating_duration_since(now).as_millis() as u64);
        self.u64(expires.unwrap_or(0));
        let p = &m.props;
        self.u8(match p.payload_format_indicator {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        self.opt_bytes(p.response_topic.as_deref().map(str::as_bytes));
        self.opt_bytes(p.correlation_data.as_deref());
        self.opt_bytes(p.content_type.as_deref().map(str::as_bytes));
        self.u32(p.user_properties.len() as u32);
        for (k, v) in &p.user_properties {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
    }
}

pub(super) fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let mut e = Enc(out);
    match r {
        Record::Session { client, expiry } => {
            e.u8(1);
            e.bytes(client.as_bytes());
            e.u32(*expiry);
        }
        Record::SessionEnd { client } => {
            e.u8(2);
            e.bytes(client.as_bytes());
        }
        Record::Sub {
            client,
            filter,
            rec,
        } => {
            e.u8(3);
            e.bytes(client.as_bytes());
            e.bytes(filter.as_bytes());
            e.opts(&rec.options);
            e.u32(rec.sub_id.unwrap_or(0));
        }
        Record::Unsub { client, filter } => {
            e.u8(4);
            e.bytes(client.as_bytes());
            e.bytes(filter.as_bytes());
        }
        Record::Msg { id, msg } => {
            e.u8(5);
            e.u64(*id);
            e.msg(msg);
        }
        Record::Enq {
            client,
            entry,
            msg,
            qos,
            retain,
            sub_ids,
        } => {
            e.u8(6);
            e.bytes(client.as_bytes());
            e.u64(*entry);
            e.u64(*msg);
            e.u8(qos.as_u8() | (u8::from(*retain) << 2));
            e.u32(sub_ids.len() as u32);
            for s in sub_ids {
                e.u32(*s);
            }
        }
        Record::Sent { client, entry, pid } => {
            e.u8(7);
            e.bytes(client.as_bytes());
            e.u64(*entry);
            e.u16(*pid);
        }
        Record::Released { client, entry } => {
            e.u8(8);
            e.bytes(client.as_bytes());
            e.u64(*entry);
        }
        Record::Done { client, entry } => {
            e.u8(9);
            e.bytes(client.as_bytes());
            e.u64(*entry);
        }
        Record::Retain { msg, owner: None } => {
            e.u8(10);
            e.msg(msg);
        }
        Record::Retain {
            msg,
            owner: Some(owner),
        } => {
            e.u8(14);
            e.msg(msg);
            e.bytes(owner.as_bytes());
        }
        Record::Unretain { topic } => {
            e.u8(11);
            e.bytes(topic.as_bytes());
        }
        Record::InQos2 { client, pid } => {
            e.u8(12);
            e.bytes(client.as_bytes());
            e.u16(*pid);
        }
        Record::InQos2Done { client, pid } => {
            e.u8(13);
            e.bytes(client.as_bytes());
            e.u16(*pid);
        }
        Record::Owner { client, principal } => {
            e.u8(15);
            e.bytes(client.as_bytes());
            e.bytes(principal.as_bytes());
        }
    }
    let body_len = (out.len() - start - 8) as u32;
    let sum = checksum(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

pub(super) struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn arc_str(&mut self) -> Option<Arc<str>> {
        Some(Arc::from(std::str::from_utf8(self.bytes()?).ok()?))
    }
    fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.bytes()?)),
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => Some(Some(String::from_utf8(b.to_vec()).ok()?)),
        }
    }
    fn opts(&mut self) -> Option<SubscribeOptions> {
        let v = self.u8()?;
        Some(SubscribeOptions {
            qos: QoS::from_u8(v & 3)?,
            no_local: v & 4 != 0,
            retain_as_published: v & 8 != 0,
            retain_handling: match (v >> 4) & 3 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        })
    }
    fn msg(&mut self) -> Option<Arc<Publication>> {
        let topic = ByteStr::from(self.string()?);
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let flags = self.u8()?;
        let expires = self.u64()?;
        let pfi = match self.u8()? {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        let response_topic = self.opt_string()?;
        let correlation_data = self.opt_bytes()?.map(Bytes::copy_from_slice);
        let content_type = self.opt_string()?;
        let n = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((self.string()?, self.string()?));
        }
        let props = PublishProperties {
            payload_format_indicator: pfi,
            response_topic,
            correlation_data,
            content_type,
            user_properties,
            ..PublishProperties::default()
        };
        let mut p = Publication::new(
            topic,
            payload,
            QoS::from_u8(flags & 3)?,
            flags & 4 != 0,
            props,
            0,
        );
        if expires != 0 {
            let left = expires.saturating_sub(unix_ms_now());
            p.expires_at = Instant::now().checked_add(Duration::from_millis(left));
            p.props.message_expiry_interval = Some(1);
        }
        Some(Arc::new(p))
    }
}

/// Decodes the record at `pos`; `None` at the end, or at a torn/corrupt record.
pub(super) fn read_record(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if checksum(body) != sum {
        return None;
    }
    let mut d = Dec { data: body, pos: 0 };
    let rec = match d.u8()? {
        1 => Record::Session {
            client: d.arc_str()?,
            expiry: d.u32()?,
        },
        2 => Record::SessionEnd {
            client: d.arc_str()?,
        },
        3 => {
            let client = d.arc_str()?;
            let filter = d.string()?;
            let options = d.opts()?;
            let sub_id = Some(d.u32()?).filter(|v| *v != 0);
            Record::Sub {
                client,
                filter,
                rec: SubRecord { options, sub_id },
            }
        }
        4 => Record::Unsub {
            client: d.arc_str()?,
            filter: d.string()?,
        },
        5 => Record::Msg {
            id: d.u64()?,
            msg: d.msg()?,
        },
        6 => {
            let client = d.arc_str()?;
            let entry = d.u64()?;
            let msg = d.u64()?;
            let flags = d.u8()?;
            let n = d.u32()?;
            let mut sub_ids = Vec::new();
            for _ in 0..n {
                sub_ids.push(d.u32()?);
            }
            Record::Enq {
                client,
                entry,
                msg,
                qos: QoS::from_u8(flags & 3)?,
                retain: flags & 4 != 0,
                sub_ids,
            }
        }
        7 => Record::Sent {
            client: d.arc_str()?,
            entry: d.u64()?,
            pid: d.u16()?,
        },
        8 => Record::Released {
            client: d.arc_str()?,
            entry: d.u64()?,
        },
        9 => Record::Done {
            client: d.arc_str()?,
            entry: d.u64()?,
        },
        10 => Record::Retain {
            msg: d.msg()?,
            owner: None,
        },
        11 => Record::Unretain { topic: d.string()? },
        12 => Record::InQos2 {
            client: d.arc_str()?,
            pid: d.u16()?,
        },
        13 => Record::InQos2Done {
            client: d.arc_str()?,
            pid: d.u16()?,
        },
        14 => Record::Retain {
            msg: d.msg()?,
            owner: Some(d.arc_str()?),
        },
        15 => Record::Owner {
            client: d.arc_str()?,
            principal: d.arc_str()?,
        },
        _ => return None,
    };
    if d.pos != body.len() {
        // Trailing bytes: not a record this version wrote (helps resynchronisation reject
        // a false start inside another record's body).
        return None;
    }
    Some((rec, pos + 8 + len))
}
