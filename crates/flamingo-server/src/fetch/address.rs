//! Which addresses an image URL may reach: every address is classified, and only public unicast
//! ones (or private ranges the operator trusts, never cloud metadata) are connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an address is, for the fetch policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast: fetched.
    Public,
    /// Not public (loopback, private, link-local, CGNAT, documentation, ...): refused unless a
    /// range in `server.image_url_allow_private` holds it.
    Private(&'static str),
    /// Refused always (cloud metadata services, unspecified, multicast, broadcast).
    Never(&'static str),
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// Cloud metadata endpoints: AWS/GCP/Azure/OpenStack/DigitalOcean/Oracle 169.254.169.254, AWS
/// ECS task metadata 169.254.170.2, Alibaba 100.100.100.200, Azure's wire server 168.63.129.16.
const METADATA_V4: [[u8; 4]; 4] = [
    [169, 254, 169, 254],
    [169, 254, 170, 2],
    [100, 100, 100, 200],
    [168, 63, 129, 16],
];

/// Classifies an IPv4 address (IANA special-purpose registry).
pub fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    if METADATA_V4.contains(&ip.octets()) {
        return Never("a cloud metadata address");
    }
    if ip.is_unspecified() || v4_in(ip, [0, 0, 0, 0], 8) {
        return Never("an unspecified (\"this network\") address");
    }
    if ip.is_broadcast() {
        return Never("the broadcast address");
    }
    if v4_in(ip, [224, 0, 0, 0], 4) {
        return Never("a multicast address");
    }
    let table: [([u8; 4], u32, &'static str); 13] = [
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([100, 64, 0, 0], 10, "a shared (CGNAT) address"),
        ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    for (net, len, what) in table {
        if v4_in(ip, net, len) {
            return Private(what);
        }
    }
    Public
}

/// Classifies an IPv6 address. Forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:aabb:ccdd::`) are classified by the embedded address; everything outside global
/// unicast `2000::/3` is refused.
pub fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Never("a cloud metadata address");
    }
    if ip.is_unspecified() {
        return Never("an unspecified address");
    }
    if ip.is_loopback() {
        return Private("a loopback address");
    }
    if v6_in(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return Never("a multicast address");
    }
    // IPv4-mapped, IPv4-translated (SIIT), NAT64 well-known prefix: the embedded address.
    if v6_in(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96)
        || v6_in(ip, [0, 0, 0, 0, 0xffff, 0, 0, 0], 96)
        || v6_in(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    {
        return classify_v4(low32);
    }
    // IPv4-compatible (deprecated): never routed as IPv6; refused whatever it embeds.
    if v6_in(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) {
        return match classify_v4(low32) {
            Public => Private("an IPv4-compatible address"),
            other => other,
        };
    }
    // 6to4: the IPv4 address in bits 16..48.
    if v6_in(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    let table: [([u16; 8], u32, &'static str); 12] = [
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            "a local-use NAT64 address",
        ),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo address"),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "a documentation address",
        ),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
        (
            [0x2001, 0x2, 0, 0, 0, 0, 0, 0],
            48,
            "a benchmarking address",
        ),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            23,
            "an IETF protocol assignment address",
        ),
        (
            [0xfc00, 0, 0, 0, 0, 0, 0, 0],
            7,
            "a unique local (private) address",
        ),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
        ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "an SRv6 SID address"),
        ([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, ""),
    ];
    for (net, len, what) in table {
        if v6_in(ip, net, len) {
            return if what.is_empty() {
                Public
            } else {
                Private(what)
            };
        }
    }
    Private("a reserved address (not global unicast)")
}

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// An address range from `server.image_url_allow_private`: `10.0.0.0/8`, `::1/128`, or a single
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u32,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => v4_in(a, n.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => v6_in(a, n.segments(), self.len),
            // `::ffff:127.0.0.1` is 127.0.0.1 for a v4 range.
            (IpAddr::V4(n), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| v4_in(a, n.octets(), self.len)),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_public() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:200::1",
            "2400:cb00::1",
        ] {
            assert_eq!(class(a), AddressClass::Public, "{a}");
        }
    }

    #[test]
    fn private_and_special_v4() {
        let private = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4 relay"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
        ];
        for (a, what) in private {
            match class(a) {
                AddressClass::Private(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
        let never = [
            ("169.254.169.254", "metadata"),
            ("169.254.170.2", "metadata"),
            ("100.100.100.200", "metadata"),
            ("168.63.129.16", "metadata"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
        ];
        for (a, what) in never {
            match class(a) {
                AddressClass::Never(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
    }

    #[test]
    fn private_and_special_v6_including_embedded_v4() {
        let private = [
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "IETF"),
            ("100::1", "discard"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("5f00::1", "SRv6"),
            ("4000::1", "reserved"),
            ("::1:0:0:1", "reserved"),
            // IPv4-mapped, -translated, -compatible, NAT64 and 6to4 forms of private addresses.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:192.168.0.1", "private"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("2002:a9fe:101::", "link-local"),
        ];
        for (a, what) in private {
            match class(a) {
                AddressClass::Private(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
        let never = [
            ("fd00:ec2::254", "metadata"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:a9fe:a9fe", "metadata"),
            ("64:ff9b::169.254.169.254", "metadata"),
            ("2002:a9fe:a9fe::1", "metadata"),
            ("::169.254.169.254", "metadata"),
            ("::ffff:0:169.254.169.254", "metadata"),
            ("::", "unspecified"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("ff02::1", "multicast"),
            ("ff05::1:3", "multicast"),
            ("::ffff:224.0.0.1", "multicast"),
            ("::ffff:255.255.255.255", "broadcast"),
        ];
        for (a, what) in never {
            match class(a) {
                AddressClass::Never(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
    }
}
