use client::{BrokerUrl, ClientError};

#[test]
fn parses_schemes_hosts_and_default_ports() {
    let u = BrokerUrl::parse("mqtt://example.com").unwrap();
    assert_eq!(
        u,
        BrokerUrl {
            tls: false,
            host: "example.com".into(),
            port: 1883
        }
    );
    let u = BrokerUrl::parse("mqtts://10.0.0.1:9000/").unwrap();
    assert_eq!(
        u,
        BrokerUrl {
            tls: true,
            host: "10.0.0.1".into(),
            port: 9000
        }
    );
    let u = BrokerUrl::parse("mqtts://[::1]").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.addr()),
        ("::1", 8883, "[::1]:8883".to_string())
    );
    let u = BrokerUrl::parse("mqtt://[::1]:1884").unwrap();
    assert_eq!(u.addr(), "[::1]:1884");
}

#[test]
fn rejects_bad_urls() {
    for bad in [
        "http://x",
        "mqtt://",
        "mqtt://h:port",
        "mqtt://h:1883/path",
        "mqtt://[::1",
        "x",
    ] {
        assert!(
            matches!(BrokerUrl::parse(bad), Err(ClientError::InvalidUrl { .. })),
            "{bad}"
        );
    }
}
