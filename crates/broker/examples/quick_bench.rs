//! Temporary measurement: fan-out / fan-in QoS 0 throughput over loopback TCP.
use std::{sync::Arc, time::Instant};

use broker::{Broker, BrokerConfig, ConnInfo, Limits, auth::Transport};
use bytes::Bytes;
use codec::{Connect, MqttCodec, Packet, ProtocolVersion, Publish, QoS, SubscribeOptions};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

struct Auth;
impl broker::auth::Authenticator for Auth {
    fn authenticate<'a>(&'a self, r: broker::auth::ConnectRequest<'a>) -> broker::auth::AuthFuture<'a> {
        Box::pin(async move { Ok(broker::auth::Identity::superuser(r.client_id.to_string())) })
    }
}

async fn client(port: u16, id: &str) -> Framed<TcpStream, MqttCodec> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut f = Framed::new(s, MqttCodec::new(ProtocolVersion::V3_1_1, u32::MAX));
    f.send(Packet::Connect(Box::new(Connect::new(ProtocolVersion::V3_1_1, id)))).await.unwrap();
    f.next().await.unwrap().unwrap();
    f
}

async fn sub(port: u16, id: &str, filter: &str, qos: QoS) -> Framed<TcpStream, MqttCodec> {
    let mut f = client(port, id).await;
    f.send(Packet::Subscribe(codec::Subscribe { packet_id: 1, subscriptions: vec![codec::Subscription { filter: filter.into(), options: SubscribeOptions::qos(qos) }], properties: Default::default() })).await.unwrap();
    f.next().await.unwrap().unwrap();
    f
}

async fn count(mut f: Framed<TcpStream, MqttCodec>, n: usize) {
    let mut got = 0;
    while got < n {
        match f.next().await.unwrap().unwrap() {
            Packet::Publish(p) => {
                got += 1;
                if let Some(pid) = p.packet_id { f.send(Packet::PubAck(codec::Ack::new(pid))).await.unwrap(); }
            }
            _ => {}
        }
    }
}

async fn publish(mut f: Framed<TcpStream, MqttCodec>, topic: String, n: usize) {
    let payload = Bytes::from(vec![b'x'; 64]);
    for i in 0..n {
        let p = Publish::new(topic.as_str(), payload.clone());
        f.feed(Packet::Publish(p)).await.unwrap();
        if i % 64 == 63 { f.flush().await.unwrap(); }
    }
    f.flush().await.unwrap();
    // keep the connection open until the test ends
    std::mem::forget(f);
}

fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let config = BrokerConfig { limits: Limits { max_queued_messages: 10_000_000, ..Limits::default() }, sys_interval: std::time::Duration::ZERO, ..BrokerConfig::default() };
    let broker = Broker::open(config, Arc::new(Auth)).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let b = broker.clone();
    tokio::spawn(async move { loop { let (s, peer) = l.accept().await.unwrap(); s.set_nodelay(true).unwrap(); tokio::spawn(b.serve_connection(s, ConnInfo::new(peer, Transport::Tcp))); } });

    let k = 100_000;
    let subs_n = 10;
    let mut waits = Vec::new();
    for i in 0..subs_n { let f = sub(port, &format!("s{i}"), "bench/out", QoS::AtMostOnce).await; waits.push(tokio::spawn(count(f, k))); }
    let p = client(port, "p").await;
    let (t, c) = (Instant::now(), cpu_secs());
    tokio::spawn(publish(p, "bench/out".into(), k));
    for w in waits { w.await.unwrap(); }
    let (el, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    println!("fan-out 1->{subs_n}: {:.0} deliveries/s, {:.2} us cpu per delivery (whole process)", (k * subs_n) as f64 / el, cpu * 1e6 / (k * subs_n) as f64);

    let per = 20_000;
    let pubs_n = 10;
    let f = sub(port, "fanin", "bench/in/+", QoS::AtMostOnce).await;
    let w = tokio::spawn(count(f, per * pubs_n));
    let mut ps = Vec::new();
    for i in 0..pubs_n { ps.push(client(port, &format!("p{i}")).await); }
    let (t, c) = (Instant::now(), cpu_secs());
    for (i, p) in ps.into_iter().enumerate() { tokio::spawn(publish(p, format!("bench/in/{i}"), per)); }
    w.await.unwrap();
    let (el, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    println!("fan-in {pubs_n}->1: {:.0} msgs/s, {:.2} us cpu per msg (whole process)", (per * pubs_n) as f64 / el, cpu * 1e6 / (per * pubs_n) as f64);
    println!("stats {:?}", broker.stats());
}
