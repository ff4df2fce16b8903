use codec::*;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

#[tokio::test]
async fn server_codec_adopts_the_version_of_connect() {
    let (a, b) = tokio::io::duplex(1024);
    let mut client = Framed::new(a, MqttCodec::new(ProtocolVersion::V5, u32::MAX));
    let mut server = Framed::new(b, MqttCodec::server(1024));

    let connect = Packet::Connect(Box::new(Connect::new(ProtocolVersion::V5, "x")));
    client.send(connect.clone()).await.unwrap();
    assert_eq!(server.next().await.unwrap().unwrap(), connect);
    assert_eq!(server.codec().version(), Some(ProtocolVersion::V5));

    // v5-only content now decodes on the server side.
    let mut p = Publish::new("t", &b"x"[..]);
    p.properties.user_properties.push(("a".into(), "b".into()));
    client.send(Packet::Publish(p.clone())).await.unwrap();
    assert_eq!(server.next().await.unwrap().unwrap(), Packet::Publish(p));

    server
        .send(Packet::Disconnect(Disconnect::new(
            ReasonCode::ServerShuttingDown,
        )))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown))
    );
}

#[tokio::test]
async fn server_codec_answers_unknown_versions_in_3_1_1() {
    let (a, b) = tokio::io::duplex(1024);
    let mut server = Framed::new(b, MqttCodec::server(1024));
    server
        .send(Packet::ConnAck(ConnAck::new(
            ReasonCode::UnsupportedProtocolVersion,
            false,
        )))
        .await
        .unwrap();
    drop(server);
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut { a }, &mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn decode_errors_surface_through_framed() {
    let (mut a, b) = tokio::io::duplex(1024);
    let mut server = Framed::new(b, MqttCodec::server(1024));
    tokio::io::AsyncWriteExt::write_all(&mut a, &[0xC0, 0x00])
        .await
        .unwrap();
    let err = server.next().await.unwrap().unwrap_err();
    let CodecError::Decode(e) = err else {
        panic!("decode error expected")
    };
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}
