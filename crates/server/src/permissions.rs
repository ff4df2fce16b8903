//! `proto::acl` rules as the broker's per-packet [`Permissions`]: decided once at CONNECT,
//! consulted for every PUBLISH and SUBSCRIBE without I/O.

use broker::auth::Permissions;
use proto::acl::Acl;

#[derive(Debug)]
pub struct AclPermissions<A>(pub A);

impl<A: Acl> Permissions for AclPermissions<A> {
    fn may_publish(&self, topic: &str) -> bool {
        self.0.may_publish(topic)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.0.may_subscribe(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::acl::{DevicePermissions, Role, RolePermissions};

    #[test]
    fn device_and_role_rules_pass_through() {
        let device = AclPermissions(DevicePermissions::new("kitchen", vec![], vec![]));
        assert!(device.may_publish("devices/kitchen/status"));
        assert!(!device.may_publish("devices/garage/status"));
        assert!(device.may_subscribe("devices/kitchen/set/#"));
        assert!(!device.may_subscribe("#"));
        assert!(!device.may_subscribe("devices/+/status"));
        let viewer = AclPermissions(RolePermissions::new(Role::Viewer));
        assert!(viewer.may_subscribe("devices/#"));
        assert!(!viewer.may_publish("devices/kitchen/set/led"));
    }
}
