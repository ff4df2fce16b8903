use bytes::Bytes;
use codec::*;

use crate::roundtrip;

const ALL: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn user() -> UserProperties {
    vec![
        ("k".into(), "v".into()),
        ("k".into(), "v2".into()),
        ("é".into(), String::new()),
    ]
}

fn publish_props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(3600),
        topic_alias: Some(7),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: user(),
        subscription_identifiers: vec![1, 268_435_455, 300],
        content_type: Some("application/json".into()),
    }
}

fn ack_props() -> AckProperties {
    AckProperties {
        reason_string: Some("because".into()),
        user_properties: user(),
    }
}

#[test]
fn connect_minimal_all_versions() {
    for v in ALL {
        roundtrip(&Packet::Connect(Box::new(Connect::new(v, "client-1"))), v);
        let mut c = Connect::new(v, "");
        c.clean_start = false;
        c.keep_alive = 0;
        roundtrip(&Packet::Connect(Box::new(c)), v);
    }
}

#[test]
fn connect_with_will_and_credentials_all_versions() {
    for v in ALL {
        let mut c = Connect::new(v, "dev");
        c.username = Some("user".into());
        c.password = Some(Bytes::from_static(b"\xffsecret\x00"));
        c.will = Some(LastWill {
            topic: ByteStr::from("devices/dev/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        });
        if v.is_v5() {
            let will = c.will.as_mut().unwrap();
            will.properties = WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(false),
                message_expiry_interval: Some(10),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: user(),
            };
            c.properties = ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(20),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user(),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"data")),
            };
        }
        roundtrip(&Packet::Connect(Box::new(c)), v);
    }
}

#[test]
fn v5_password_without_user_name_round_trips() {
    let mut c = Connect::new(ProtocolVersion::V5, "x");
    c.password = Some(Bytes::from_static(b"pw"));
    roundtrip(&Packet::Connect(Box::new(c)), ProtocolVersion::V5);
}

#[test]
fn connack_all_versions_and_codes() {
    for v in ALL {
        // 3.1 has no session present flag (the byte is 0 on the wire).
        let session_present = v != ProtocolVersion::V3_1;
        roundtrip(
            &Packet::ConnAck(ConnAck::new(ReasonCode::Success, session_present)),
            v,
        );
        for code in [
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ] {
            roundtrip(&Packet::ConnAck(ConnAck::new(code, false)), v);
        }
    }
    let props = ConnAckProperties {
        session_expiry_interval: Some(0),
        receive_maximum: Some(100),
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(true),
        maximum_packet_size: Some(65536),
        assigned_client_identifier: Some("auto-1".into()),
        topic_alias_maximum: Some(0),
        reason_string: Some("ok".into()),
        user_properties: user(),
        wildcard_subscription_available: Some(true),
        subscription_identifiers_available: Some(false),
        shared_subscription_available: Some(true),
        server_keep_alive: Some(30),
        response_information: Some("resp/".into()),
        server_reference: Some("other:1883".into()),
        authentication_method: Some("m".into()),
        authentication_data: Some(Bytes::from_static(b"d")),
    };
    let ack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::Banned,
        properties: props,
    };
    roundtrip(&Packet::ConnAck(ack), ProtocolVersion::V5);
}

#[test]
fn v3_connack_maps_reason_codes_to_return_codes() {
    let bytes = crate::enc(
        &Packet::ConnAck(ConnAck::new(ReasonCode::ServerBusy, false)),
        ProtocolVersion::V3_1_1,
    );
    assert_eq!(&bytes[..], &[0x20, 0x02, 0x00, 0x03]);
    let bytes = crate::enc(
        &Packet::ConnAck(ConnAck::new(ReasonCode::Banned, false)),
        ProtocolVersion::V3_1_1,
    );
    assert_eq!(&bytes[..], &[0x20, 0x02, 0x00, 0x05]);
}

#[test]
fn publish_all_qos_all_versions() {
    for v in ALL {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut p = Publish::new("a/b/c", Bytes::from_static(b"hello"));
            p.qos = qos;
            p.retain = true;
            if qos != QoS::AtMostOnce {
                p.packet_id = Some(65535);
                p.dup = true;
            }
            roundtrip(&Packet::Publish(p.clone()), v);
            p.payload = Bytes::new();
            roundtrip(&Packet::Publish(p), v);
        }
    }
    let mut p = Publish::new("t", Bytes::from(vec![7u8; 70_000]));
    p.properties = publish_props();
    roundtrip(&Packet::Publish(p), ProtocolVersion::V5);
}

#[test]
fn v5_publish_empty_topic_with_alias() {
    let mut p = Publish::new("", Bytes::from_static(b"x"));
    p.properties.topic_alias = Some(1);
    roundtrip(&Packet::Publish(p), ProtocolVersion::V5);
}

#[test]
fn publish_payload_and_topic_are_slices_of_the_input() {
    let p = Publish::new("zero/copy", Bytes::from_static(b"payload"));
    let bytes = crate::enc(&Packet::Publish(p), ProtocolVersion::V3_1_1).freeze();
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(ProtocolVersion::V3_1_1), 1024).unwrap()
    else {
        panic!("expected PUBLISH")
    };
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
    assert!(range.contains(&(p.topic.as_ptr() as usize)));
}

#[test]
fn acks_all_versions() {
    for v in ALL {
        for make in [
            Packet::PubAck,
            Packet::PubRec,
            Packet::PubRel,
            Packet::PubComp,
        ] {
            roundtrip(&make(Ack::new(1)), v);
        }
    }
    let v = ProtocolVersion::V5;
    roundtrip(
        &Packet::PubAck(Ack {
            packet_id: 9,
            reason_code: ReasonCode::NoMatchingSubscribers,
            properties: AckProperties::default(),
        }),
        v,
    );
    roundtrip(
        &Packet::PubRec(Ack {
            packet_id: 9,
            reason_code: ReasonCode::QuotaExceeded,
            properties: ack_props(),
        }),
        v,
    );
    roundtrip(
        &Packet::PubRel(Ack {
            packet_id: 9,
            reason_code: ReasonCode::PacketIdentifierNotFound,
            properties: ack_props(),
        }),
        v,
    );
    roundtrip(
        &Packet::PubComp(Ack {
            packet_id: 9,
            reason_code: ReasonCode::Success,
            properties: ack_props(),
        }),
        v,
    );
}

#[test]
fn v5_success_ack_uses_short_form() {
    let bytes = crate::enc(&Packet::PubAck(Ack::new(0x0102)), ProtocolVersion::V5);
    assert_eq!(&bytes[..], &[0x40, 0x02, 0x01, 0x02]);
}

#[test]
fn subscribe_and_suback_all_versions() {
    for v in ALL {
        let sub = Subscribe {
            packet_id: 3,
            subscriptions: vec![
                Subscription {
                    filter: "a/+/c".into(),
                    options: SubscribeOptions::qos(QoS::AtMostOnce),
                },
                Subscription {
                    filter: "#".into(),
                    options: SubscribeOptions::qos(QoS::ExactlyOnce),
                },
                Subscription {
                    filter: "$share/g/x".into(),
                    options: SubscribeOptions::qos(QoS::AtLeastOnce),
                },
            ],
            properties: SubscribeProperties::default(),
        };
        roundtrip(&Packet::Subscribe(sub), v);
        let ack = SubAck {
            packet_id: 3,
            reason_codes: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        };
        roundtrip(&Packet::SubAck(ack), v);
    }
    let sub = Subscribe {
        packet_id: 4,
        subscriptions: vec![Subscription {
            filter: "x/#".into(),
            options: SubscribeOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: Some(42),
            user_properties: user(),
        },
    };
    roundtrip(&Packet::Subscribe(sub), ProtocolVersion::V5);
    let ack = SubAck {
        packet_id: 4,
        reason_codes: vec![
            ReasonCode::NotAuthorized,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
        properties: ack_props(),
    };
    roundtrip(&Packet::SubAck(ack), ProtocolVersion::V5);
}

#[test]
fn v3_suback_maps_failures_to_0x80() {
    let ack = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQoS1],
        properties: AckProperties::default(),
    };
    let bytes = crate::enc(&Packet::SubAck(ack), ProtocolVersion::V3_1_1);
    assert_eq!(&bytes[..], &[0x90, 0x04, 0x00, 0x01, 0x80, 0x01]);
}

#[test]
fn unsubscribe_and_unsuback_all_versions() {
    for v in ALL {
        let u = Unsubscribe {
            packet_id: 5,
            filters: vec!["a/b".into(), "c/#".into()],
            properties: UnsubscribeProperties::default(),
        };
        roundtrip(&Packet::Unsubscribe(u), v);
        let reason_codes = if v.is_v5() {
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        } else {
            vec![]
        };
        roundtrip(
            &Packet::UnsubAck(UnsubAck {
                packet_id: 5,
                reason_codes,
                properties: AckProperties::default(),
            }),
            v,
        );
    }
    let u = Unsubscribe {
        packet_id: 6,
        filters: vec!["a".into()],
        properties: UnsubscribeProperties {
            user_properties: user(),
        },
    };
    roundtrip(&Packet::Unsubscribe(u), ProtocolVersion::V5);
    roundtrip(
        &Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reason_codes: vec![ReasonCode::NotAuthorized],
            properties: ack_props(),
        }),
        ProtocolVersion::V5,
    );
}

#[test]
fn ping_disconnect_auth() {
    for v in ALL {
        roundtrip(&Packet::PingReq, v);
        roundtrip(&Packet::PingResp, v);
        roundtrip(&Packet::Disconnect(Disconnect::default()), v);
    }
    assert_eq!(
        &crate::enc(&Packet::PingReq, ProtocolVersion::V3_1_1)[..],
        &[0xC0, 0x00]
    );
    let v = ProtocolVersion::V5;
    roundtrip(
        &Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
        v,
    );
    roundtrip(
        &Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::UseAnotherServer,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("moving".into()),
                user_properties: user(),
                server_reference: Some("b:1883".into()),
            },
        }),
        v,
    );
    roundtrip(&Packet::Auth(Auth::default()), v);
    roundtrip(
        &Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"\x01\x02")),
                reason_string: Some("more".into()),
                user_properties: user(),
            },
        }),
        v,
    );
}

#[test]
fn encode_rejects_invalid_packets() {
    let v = ProtocolVersion::V3_1_1;
    let mut out = bytes::BytesMut::new();
    let mut p = Publish::new("t", Bytes::new());
    p.qos = QoS::AtLeastOnce;
    assert!(matches!(
        encode(&Packet::Publish(p.clone()), v, &mut out),
        Err(EncodeError::Invalid { .. })
    ));
    p.packet_id = Some(0);
    assert!(encode(&Packet::Publish(p.clone()), v, &mut out).is_err());
    p.qos = QoS::AtMostOnce;
    p.packet_id = None;
    p.dup = true;
    assert!(encode(&Packet::Publish(p), v, &mut out).is_err());
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), v, &mut out),
        Err(EncodeError::NotInVersion {
            packet: "AUTH",
            version: v
        })
    );
    let long = "x".repeat(70_000);
    assert_eq!(
        encode(
            &Packet::Publish(Publish::new(long.as_str(), Bytes::new())),
            v,
            &mut out
        ),
        Err(EncodeError::FieldTooLong { len: 70_000 })
    );
    assert!(out.is_empty(), "failed encodes must not write");
}
