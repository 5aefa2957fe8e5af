//! Forget UDP flows that lowport's NAT rules translated.
//!
//! UDP has no connection to close: conntrack keeps sending an existing flow
//! (an HTTP/3 client, say) to the target it was first translated to, long
//! after the rule is gone or changed. This module deletes those entries over
//! ctnetlink: dump the table, pick the UDP entries to the mapped port whose
//! destination was NATed, and delete each by its original tuple.

use std::io;

use super::nft::netlink::{Attrs, Msg, Request, Socket, NLM_F_ACK, NLM_F_DUMP};
use super::plan::Family;

// linux/netfilter/nfnetlink_conntrack.h and nf_conntrack_common.h.
const SUBSYS_CTNETLINK: u8 = libc::NFNL_SUBSYS_CTNETLINK as u8;
const IPCTNL_MSG_CT_NEW: u8 = 0;
const IPCTNL_MSG_CT_GET: u8 = 1;
const IPCTNL_MSG_CT_DELETE: u8 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPS_DST_NAT: u32 = 1 << 5;

/// One conntrack entry worth deleting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    /// `AF_INET` or `AF_INET6`, from the entry's `nfgenmsg`.
    family: u8,
    /// `CTA_TUPLE_ORIG` exactly as the kernel sent it: the delete key.
    orig: Vec<u8>,
    /// `CTA_ZONE`, when the entry is in a zone other than the default.
    zone: Option<Vec<u8>>,
}

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

/// Delete every conntrack entry whose original direction is UDP to port
/// `dport` and whose destination was translated (DNAT or redirect), in
/// `family` or both. Returns how many were deleted; entries that vanish
/// meanwhile (timed out) are not errors.
pub fn delete_udp_flows(dport: u16, family: Option<Family>) -> io::Result<usize> {
    let mut sock = Socket::open()?;
    let dump_family = family.map_or(libc::AF_UNSPEC as u8, af);
    let dump = Request::new(
        SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_DUMP,
        1,
        dump_family,
    )
    .finish();
    let mut flows = Vec::new();
    sock.transact(&dump, 1, |msg| {
        if let Some(flow) = translated_udp_flow(&msg, dport) {
            flows.push(flow);
        }
        Ok(())
    })?;

    let mut deleted = 0;
    for (seq, flow) in (2..).zip(&flows) {
        let mut req = Request::new(
            SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
            seq,
            flow.family,
        )
        .attr_raw(&flow.orig);
        if let Some(zone) = &flow.zone {
            req = req.attr_raw(zone);
        }
        match sock.transact(&req.finish(), seq, |_| Ok(())) {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    tracing::debug!(port = dport, deleted, "UDP conntrack entries deleted");
    Ok(deleted)
}

/// The entry in a dump message, if it is a NATed UDP flow to `dport`.
fn translated_udp_flow(msg: &Msg<'_>, dport: u16) -> Option<Flow> {
    let ty = u16::from(SUBSYS_CTNETLINK) << 8 | u16::from(IPCTNL_MSG_CT_NEW);
    if msg.ty != ty {
        return None;
    }
    let family = msg.nf_family()?;
    flow_from_attrs(family, msg.nf_attrs(), dport)
}

fn flow_from_attrs(family: u8, attrs: Attrs<'_>, dport: u16) -> Option<Flow> {
    let status = attrs.clone().get(CTA_STATUS)?.be32()?;
    if status & IPS_DST_NAT == 0 {
        return None;
    }
    let orig = attrs.clone().get(CTA_TUPLE_ORIG)?;
    let proto = orig.nested().get(CTA_TUPLE_PROTO)?;
    let num = proto.nested().get(CTA_PROTO_NUM)?.u8()?;
    let port = proto.nested().get(CTA_PROTO_DST_PORT)?.be16()?;
    if i32::from(num) != libc::IPPROTO_UDP || port != dport {
        return None;
    }
    Some(Flow {
        family,
        orig: orig.raw.to_vec(),
        zone: attrs.get(CTA_ZONE).map(|z| z.raw.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode one attribute (nested when `nested`).
    fn attr(ty: u16, nested: bool, data: &[u8]) -> Vec<u8> {
        let len = (4 + data.len()) as u16;
        let ty = if nested { ty | 0x8000 } else { ty };
        let mut v = len.to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    fn entry(proto: u8, dport: u16, status: u32, zone: bool) -> Vec<u8> {
        let ip = attr(
            1,
            true,
            &[
                attr(1, false, &[10, 0, 0, 2]),
                attr(2, false, &[10, 0, 0, 1]),
            ]
            .concat(),
        );
        let pr = attr(
            CTA_TUPLE_PROTO,
            true,
            &[
                attr(CTA_PROTO_NUM, false, &[proto]),
                attr(2, false, &40000u16.to_be_bytes()),
                attr(CTA_PROTO_DST_PORT, false, &dport.to_be_bytes()),
            ]
            .concat(),
        );
        let mut v = attr(CTA_TUPLE_ORIG, true, &[ip, pr].concat());
        v.extend(attr(CTA_STATUS, false, &status.to_be_bytes()));
        if zone {
            v.extend(attr(CTA_ZONE, false, &[0, 7]));
        }
        v
    }

    #[test]
    fn picks_natted_udp_flows_to_the_port() {
        let udp = libc::IPPROTO_UDP as u8;
        let tcp = libc::IPPROTO_TCP as u8;
        let e = entry(udp, 443, IPS_DST_NAT | 0x8, false);
        let flow = flow_from_attrs(2, Attrs::new(&e), 443).unwrap();
        assert_eq!(flow.family, 2);
        assert_eq!(flow.orig, Attrs::new(&e).get(CTA_TUPLE_ORIG).unwrap().raw);
        assert_eq!(flow.zone, None);

        assert!(
            flow_from_attrs(2, Attrs::new(&e), 80).is_none(),
            "other port"
        );
        let not_natted = entry(udp, 443, 0x8, false);
        assert!(flow_from_attrs(2, Attrs::new(&not_natted), 443).is_none());
        let tcp_flow = entry(tcp, 443, IPS_DST_NAT, false);
        assert!(flow_from_attrs(2, Attrs::new(&tcp_flow), 443).is_none());

        let zoned = entry(udp, 443, IPS_DST_NAT, true);
        let flow = flow_from_attrs(10, Attrs::new(&zoned), 443).unwrap();
        assert_eq!(
            flow.zone.as_deref(),
            Some(&attr(CTA_ZONE, false, &[0, 7])[..6])
        );
    }

    #[test]
    fn truncated_entries_are_skipped() {
        let e = entry(libc::IPPROTO_UDP as u8, 443, IPS_DST_NAT, false);
        for cut in 0..e.len() {
            // Must not panic; a cut entry may or may not still parse.
            let _ = flow_from_attrs(2, Attrs::new(&e[..cut]), 443);
        }
    }
}
