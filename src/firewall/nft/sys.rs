//! The one place lowport talks to libnftnl through raw `nftnl-sys` calls.
//!
//! The `nftnl` crate builds tables, chains, rules and batches, but has no
//! safe wrapper for the `fib`, `redir` and `masq` expressions, nor any way
//! to read rules back. Here, [`Expr`] is a plain-data description of one
//! nftables expression: it can be turned into a libnftnl expression (so
//! `Rule::add_expr` takes it); rules the kernel dumps are decoded into it
//! by `dump`, without libnftnl. Chains are read back through libnftnl here.
//! Everything `unsafe` about libnftnl lives in this file, each block with
//! the reason it is sound.

use std::ffi::{c_void, CStr};
use std::io;
use std::ptr::NonNull;

use nftnl_sys as sys;

/// One nftables expression, as plain data. Only what lowport writes is
/// modelled; anything else decodes to [`Expr::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `meta load KEY => reg DREG`
    Meta { key: u32, dreg: u32 },
    /// `cmp OP reg SREG DATA`
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `payload load LEN b @ BASE header + OFFSET => reg DREG`
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `fib FLAGS RESULT => reg DREG`
    Fib { flags: u32, result: u32, dreg: u32 },
    /// `ct load KEY => reg DREG`
    Ct { key: u32, dreg: u32 },
    /// `bitwise reg DREG = (reg SREG & MASK) ^ XOR`
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `immediate reg DREG DATA`
    Immediate { dreg: u32, data: Vec<u8> },
    /// `immediate reg 0 VERDICT` (accept, drop; no jumps)
    Verdict { code: i32 },
    /// `redir proto_min reg REG flags FLAGS`
    Redir { reg_proto: u32, flags: u32 },
    /// `nat TYPE FAMILY addr_min reg A proto_min reg P flags FLAGS`
    Nat {
        nat_type: u32,
        family: u32,
        reg_addr: u32,
        reg_proto: u32,
        flags: u32,
    },
    /// `masq`
    Masq,
    /// Something lowport never writes; the text says what, for messages.
    Other(String),
}

/// One attribute value to set on a libnftnl expression.
enum Val<'a> {
    U32(u32),
    Data(&'a [u8]),
}

impl Expr {
    /// Short name for messages: the libnftnl expression name.
    pub(crate) fn kind(&self) -> String {
        match self {
            Expr::Other(what) => what.clone(),
            Expr::Verdict { .. } => "verdict".into(),
            e => e.parts().0.to_string_lossy().into_owned(),
        }
    }

    /// The libnftnl expression name and the attributes to set.
    fn parts(&self) -> (&'static CStr, Vec<(u32, Val<'_>)>) {
        use Val::*;
        match self {
            Expr::Meta { key, dreg } => (
                c"meta",
                vec![
                    (sys::NFTNL_EXPR_META_KEY, U32(*key)),
                    (sys::NFTNL_EXPR_META_DREG, U32(*dreg)),
                ],
            ),
            Expr::Cmp { sreg, op, data } => (
                c"cmp",
                vec![
                    (sys::NFTNL_EXPR_CMP_SREG, U32(*sreg)),
                    (sys::NFTNL_EXPR_CMP_OP, U32(*op)),
                    (sys::NFTNL_EXPR_CMP_DATA, Data(data)),
                ],
            ),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => (
                c"payload",
                vec![
                    (sys::NFTNL_EXPR_PAYLOAD_DREG, U32(*dreg)),
                    (sys::NFTNL_EXPR_PAYLOAD_BASE, U32(*base)),
                    (sys::NFTNL_EXPR_PAYLOAD_OFFSET, U32(*offset)),
                    (sys::NFTNL_EXPR_PAYLOAD_LEN, U32(*len)),
                ],
            ),
            Expr::Fib {
                flags,
                result,
                dreg,
            } => (
                c"fib",
                vec![
                    (sys::NFTNL_EXPR_FIB_DREG, U32(*dreg)),
                    (sys::NFTNL_EXPR_FIB_RESULT, U32(*result)),
                    (sys::NFTNL_EXPR_FIB_FLAGS, U32(*flags)),
                ],
            ),
            Expr::Ct { key, dreg } => (
                c"ct",
                vec![
                    (sys::NFTNL_EXPR_CT_DREG, U32(*dreg)),
                    (sys::NFTNL_EXPR_CT_KEY, U32(*key)),
                ],
            ),
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => (
                c"bitwise",
                vec![
                    (sys::NFTNL_EXPR_BITWISE_SREG, U32(*sreg)),
                    (sys::NFTNL_EXPR_BITWISE_DREG, U32(*dreg)),
                    (sys::NFTNL_EXPR_BITWISE_LEN, U32(*len)),
                    (sys::NFTNL_EXPR_BITWISE_MASK, Data(mask)),
                    (sys::NFTNL_EXPR_BITWISE_XOR, Data(xor)),
                ],
            ),
            Expr::Immediate { dreg, data } => (
                c"immediate",
                vec![
                    (sys::NFTNL_EXPR_IMM_DREG, U32(*dreg)),
                    (sys::NFTNL_EXPR_IMM_DATA, Data(data)),
                ],
            ),
            Expr::Verdict { code } => (
                c"immediate",
                vec![
                    (sys::NFTNL_EXPR_IMM_DREG, U32(libc::NFT_REG_VERDICT as u32)),
                    (sys::NFTNL_EXPR_IMM_VERDICT, U32(*code as u32)),
                ],
            ),
            Expr::Redir { reg_proto, flags } => (
                c"redir",
                vec![
                    (sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, U32(*reg_proto)),
                    (sys::NFTNL_EXPR_REDIR_FLAGS, U32(*flags)),
                ],
            ),
            Expr::Nat {
                nat_type,
                family,
                reg_addr,
                reg_proto,
                flags,
            } => (
                c"nat",
                vec![
                    (sys::NFTNL_EXPR_NAT_TYPE, U32(*nat_type)),
                    (sys::NFTNL_EXPR_NAT_FAMILY, U32(*family)),
                    (sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, U32(*reg_addr)),
                    (sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, U32(*reg_proto)),
                    (sys::NFTNL_EXPR_NAT_FLAGS, U32(*flags)),
                ],
            ),
            Expr::Masq => (c"masq", vec![]),
            // Never built: `Other` only comes out of decoding. An expression
            // the kernel does not know makes it reject the batch, loudly.
            Expr::Other(_) => (c"lowport-unknown", vec![]),
        }
    }

    /// Allocate the libnftnl expression. The caller owns it (a rule takes it
    /// over in `nftnl_rule_add_expr`).
    fn alloc(&self) -> NonNull<sys::nftnl_expr> {
        let (name, attrs) = self.parts();
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let expr = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        let Some(expr) = NonNull::new(expr) else {
            // Out of memory for a few bytes, or a name libnftnl does not
            // know (only `Other`, which is never built): nothing sane to do.
            std::process::abort();
        };
        for (attr, val) in attrs {
            match val {
                // SAFETY: `expr` is a live expression we own; libnftnl
                // ignores attributes that do not belong to its type.
                Val::U32(v) => unsafe { sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, v) },
                Val::Data(d) => {
                    // SAFETY: as above; `d` is valid for `d.len()` bytes and
                    // libnftnl copies it (register data is at most 64 bytes,
                    // which every caller stays far below).
                    let rc = unsafe {
                        sys::nftnl_expr_set(
                            expr.as_ptr(),
                            attr as u16,
                            d.as_ptr().cast::<c_void>(),
                            d.len() as u32,
                        )
                    };
                    if rc < 0 {
                        std::process::abort();
                    }
                }
            }
        }
        expr
    }
}

impl nftnl::expr::Expression for Expr {
    fn to_expr(&self, _rule: &nftnl::Rule<'_>) -> NonNull<sys::nftnl_expr> {
        self.alloc()
    }
}

/// A rule as the kernel dumped it.
#[derive(Debug, Clone)]
pub(crate) struct KernelRule {
    pub table: String,
    pub chain: String,
    pub exprs: Vec<Expr>,
    /// `NFTNL_RULE_USERDATA`: nft's TLVs (the comment is type 0).
    pub userdata: Vec<u8>,
}

/// A chain as the kernel dumped it.
#[derive(Debug, Clone)]
pub(crate) struct KernelChain {
    pub table: String,
    pub name: String,
    /// Base chains only: hook number, priority, type and policy.
    pub hook: Option<u32>,
    pub prio: Option<i32>,
    pub kind: Option<String>,
    pub policy: Option<u32>,
}

/// Copy a message into 8-byte aligned memory: libnftnl reads the
/// `nlmsghdr` in place.
fn aligned(raw: &[u8]) -> Vec<u64> {
    raw.chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect()
}

/// Owns a parsed `nftnl_chain` and frees it.
struct ChainGuard(NonNull<sys::nftnl_chain>);

impl Drop for ChainGuard {
    fn drop(&mut self) {
        // SAFETY: we allocated it and nothing else frees it.
        unsafe { sys::nftnl_chain_free(self.0.as_ptr()) }
    }
}

/// Read a string attribute through a libnftnl getter.
fn owned_str(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null pointers from libnftnl string getters point to a
    // NUL-terminated string owned by the object, which is still live here.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Parse an `NFT_MSG_NEWCHAIN` message (header included) from a dump.
pub(crate) fn parse_chain(raw: &[u8]) -> io::Result<KernelChain> {
    let buf = aligned(raw);
    // SAFETY: allocation has no preconditions; null is checked.
    let chain = ChainGuard(NonNull::new(unsafe { sys::nftnl_chain_alloc() }).ok_or_else(oom)?);
    let c = chain.0.as_ptr();
    // SAFETY: `buf` holds the whole message (its nlmsg_len says so and is
    // within the buffer, checked by the caller's message splitter), aligned
    // for `nlmsghdr`; `c` is a live chain.
    let rc = unsafe { sys::nftnl_chain_nlmsg_parse(buf.as_ptr().cast::<libc::nlmsghdr>(), c) };
    if rc < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "libnftnl cannot parse a chain",
        ));
    }
    let is_set = |a: u32| {
        // SAFETY: `c` is live until `chain` drops at the end of this function.
        unsafe { sys::nftnl_chain_is_set(c, a as u16) }
    };
    // SAFETY: `c` is live; each getter is called only for a set attribute
    // (or returns null, handled by `owned_str`).
    unsafe {
        Ok(KernelChain {
            table: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)),
            name: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
            hook: is_set(sys::NFTNL_CHAIN_HOOKNUM)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16)),
            prio: is_set(sys::NFTNL_CHAIN_PRIO)
                .then(|| sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16)),
            kind: is_set(sys::NFTNL_CHAIN_TYPE)
                .then(|| owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16))),
            policy: is_set(sys::NFTNL_CHAIN_POLICY)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16)),
        })
    }
}

fn oom() -> io::Error {
    io::Error::new(io::ErrorKind::OutOfMemory, "libnftnl allocation failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every expression lowport writes survives the trip: build it with
    /// libnftnl, put it in a rule, serialize, and decode it with `dump`.
    #[test]
    fn expressions_survive_a_libnftnl_round_trip() {
        let exprs = vec![
            Expr::Fib {
                flags: 2,
                result: 3,
                dreg: 1,
            },
            Expr::Meta { key: 16, dreg: 1 },
            Expr::Cmp {
                sreg: 1,
                op: 0,
                data: vec![6],
            },
            Expr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 1,
            },
            Expr::Ct { key: 2, dreg: 1 },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                len: 4,
                mask: vec![0x20, 0, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Immediate {
                dreg: 2,
                data: vec![0x1f, 0x90],
            },
            Expr::Redir {
                reg_proto: 1,
                flags: 2,
            },
            Expr::Nat {
                nat_type: 1,
                family: 2,
                reg_addr: 1,
                reg_proto: 2,
                flags: 2,
            },
            Expr::Masq,
            Expr::Verdict { code: 0 },
        ];
        let table = nftnl::Table::new(c"t", nftnl::ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"c", &table);
        let mut rule = nftnl::Rule::new(&chain);
        for e in &exprs {
            rule.add_expr(e);
        }
        let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
        // SAFETY: the buffer has the size `NlMsg::write` requires.
        unsafe { nftnl::NlMsg::write(&rule, buf.as_mut_ptr().cast(), 1, nftnl::MsgType::Add) };
        let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
        let msg = super::super::netlink::messages(&buf[..len])
            .next()
            .unwrap()
            .unwrap();
        let parsed = super::super::dump::parse_rule(&msg).unwrap();
        assert_eq!(parsed.table, "t");
        assert_eq!(parsed.chain, "c");
        assert_eq!(parsed.exprs, exprs);
    }
}
