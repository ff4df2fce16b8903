//! Temporary measurement: RSS per idle MQTT connection.
use std::sync::Arc;

use broker::{Broker, BrokerConfig, ConnInfo, auth::{AllowAll, Transport}};
use codec::{Connect, MqttCodec, Packet, ProtocolVersion};
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Auth;
impl broker::auth::Authenticator for Auth {
    fn authenticate<'a>(&'a self, r: broker::auth::ConnectRequest<'a>) -> broker::auth::AuthFuture<'a> {
        let _ = AllowAll;
        Box::pin(async move { Ok(broker::auth::Identity::superuser(r.client_id.to_string())) })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap_or("5000".into()).parse().unwrap();
    if mode == "server" {
        let broker = Broker::open(BrokerConfig::default(), Arc::new(Auth)).await.unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap().port());
        let b2 = broker.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                eprintln!("server rss {} kB clients {}", rss_kb(), b2.stats().clients_connected);
            }
        });
        loop {
            let (s, peer) = l.accept().await.unwrap();
            let b = broker.clone();
            let fut = async move { b.serve_connection(s, ConnInfo::new(peer, Transport::Tcp)).await };
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| eprintln!("future size {}", std::mem::size_of_val(&fut)));
            tokio::spawn(fut);
        }
    } else {
        let port: u16 = mode.parse().unwrap();
        let mut conns = Vec::new();
        for i in 0..n {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut f = Framed::new(s, MqttCodec::new(ProtocolVersion::V3_1_1, u32::MAX));
            let mut c = Connect::new(ProtocolVersion::V3_1_1, format!("c{i}"));
            c.keep_alive = 600;
            f.send(Packet::Connect(Box::new(c))).await.unwrap();
            let _ = f.next().await;
            if std::env::var("NOSUB").is_err() { f.send(Packet::Subscribe(codec::Subscribe { packet_id: 1, subscriptions: vec![codec::Subscription { filter: format!("devices/c{i}/set/#"), options: Default::default() }], properties: Default::default() })).await.unwrap();
            let _ = f.next().await; }
            conns.push(f);
        }
        eprintln!("client: {n} connected");
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    }
}
