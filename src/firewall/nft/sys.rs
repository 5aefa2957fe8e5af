//! The one place lowport talks to libnftnl through raw `nftnl-sys` calls.
//!
//! The `nftnl` crate builds tables, chains, rules and batches, but has no
//! safe wrapper for the `fib`, `redir` and `masq` expressions, nor any way
//! to read rules back. Here, [`Expr`] is a plain-data description of one
//! nftables expression: it can be turned into a libnftnl expression (so
//! `Rule::add_expr` takes it) and decoded back from a rule the kernel
//! dumped. Everything `unsafe` about libnftnl lives in this file, each block
//! with the reason it is sound.

use std::ffi::{c_void, CStr};
use std::io;
use std::ptr::NonNull;

use nftnl_sys as sys;

/// `NF_NAT_RANGE_MAP_IPS`: the kernel adds it to a `nat` expression that has
/// an address register, whether or not it was sent.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
/// `NFT_BITWISE_BOOL`: mask-and-xor, the only bitwise operation we write.
const NFT_BITWISE_BOOL: u32 = 0;
/// Highest expression attribute number libnftnl uses (they are bits of a u32).
const MAX_EXPR_ATTR: u32 = 16;

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

    /// Decode a libnftnl expression the kernel sent back.
    ///
    /// # Safety
    /// `e` must point to a live expression (one of a parsed rule's).
    unsafe fn decode(e: *const sys::nftnl_expr) -> Expr {
        let attr = |a: u32| -> Option<u32> {
            // SAFETY: `e` is live (caller's contract); getters of unset
            // attributes are never reached.
            unsafe {
                sys::nftnl_expr_is_set(e, a as u16).then(|| sys::nftnl_expr_get_u32(e, a as u16))
            }
        };
        let data = |a: u32| -> Option<Vec<u8>> {
            // SAFETY: as above; libnftnl returns a pointer to `len` bytes it
            // owns, copied out before the expression can go away.
            unsafe {
                if !sys::nftnl_expr_is_set(e, a as u16) {
                    return None;
                }
                let mut len = 0u32;
                let p = sys::nftnl_expr_get(e, a as u16, &mut len).cast::<u8>();
                if p.is_null() {
                    return None;
                }
                Some(std::slice::from_raw_parts(p, len as usize).to_vec())
            }
        };
        // SAFETY: `e` is live; the name attribute is always set on parsed
        // expressions, and a null is handled.
        let name = unsafe {
            let p = sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16);
            if p.is_null() {
                return Expr::Other("unnamed expression".into());
            }
            CStr::from_ptr(p)
        };
        // The attributes set, as a bit mask (bit n: attribute n): no
        // allocation per expression, a dump of thousands of rules decodes
        // tens of thousands of them.
        let present: u32 = (1..MAX_EXPR_ATTR)
            .filter(|a| attr_set(e, *a))
            .fold(0, |m, a| m | 1 << a);
        let only = |allowed: &[u32]| present & !allowed.iter().fold(0, |m, a| m | 1 << a) == 0;
        let other = || {
            let attrs: Vec<u32> = (1..MAX_EXPR_ATTR)
                .filter(|a| present & 1 << a != 0)
                .collect();
            Expr::Other(format!(
                "{} expression with attributes {attrs:?}",
                name.to_string_lossy()
            ))
        };

        let decoded = match name.to_bytes() {
            b"meta" if only(&[sys::NFTNL_EXPR_META_KEY, sys::NFTNL_EXPR_META_DREG]) => (|| {
                Some(Expr::Meta {
                    key: attr(sys::NFTNL_EXPR_META_KEY)?,
                    dreg: attr(sys::NFTNL_EXPR_META_DREG)?,
                })
            })(
            ),
            b"cmp" => (|| {
                Some(Expr::Cmp {
                    sreg: attr(sys::NFTNL_EXPR_CMP_SREG)?,
                    op: attr(sys::NFTNL_EXPR_CMP_OP)?,
                    data: data(sys::NFTNL_EXPR_CMP_DATA)?,
                })
            })(),
            b"payload"
                if only(&[
                    sys::NFTNL_EXPR_PAYLOAD_DREG,
                    sys::NFTNL_EXPR_PAYLOAD_BASE,
                    sys::NFTNL_EXPR_PAYLOAD_OFFSET,
                    sys::NFTNL_EXPR_PAYLOAD_LEN,
                ]) =>
            {
                (|| {
                    Some(Expr::Payload {
                        base: attr(sys::NFTNL_EXPR_PAYLOAD_BASE)?,
                        offset: attr(sys::NFTNL_EXPR_PAYLOAD_OFFSET)?,
                        len: attr(sys::NFTNL_EXPR_PAYLOAD_LEN)?,
                        dreg: attr(sys::NFTNL_EXPR_PAYLOAD_DREG)?,
                    })
                })()
            }
            b"fib" => (|| {
                Some(Expr::Fib {
                    flags: attr(sys::NFTNL_EXPR_FIB_FLAGS)?,
                    result: attr(sys::NFTNL_EXPR_FIB_RESULT)?,
                    dreg: attr(sys::NFTNL_EXPR_FIB_DREG)?,
                })
            })(),
            b"ct" if only(&[sys::NFTNL_EXPR_CT_DREG, sys::NFTNL_EXPR_CT_KEY]) => (|| {
                Some(Expr::Ct {
                    key: attr(sys::NFTNL_EXPR_CT_KEY)?,
                    dreg: attr(sys::NFTNL_EXPR_CT_DREG)?,
                })
            })(),
            b"bitwise"
                if attr(sys::NFTNL_EXPR_BITWISE_OP).unwrap_or(NFT_BITWISE_BOOL)
                    == NFT_BITWISE_BOOL
                    && present & 1 << sys::NFTNL_EXPR_BITWISE_DATA == 0 =>
            {
                (|| {
                    Some(Expr::Bitwise {
                        sreg: attr(sys::NFTNL_EXPR_BITWISE_SREG)?,
                        dreg: attr(sys::NFTNL_EXPR_BITWISE_DREG)?,
                        len: attr(sys::NFTNL_EXPR_BITWISE_LEN)?,
                        mask: data(sys::NFTNL_EXPR_BITWISE_MASK)?,
                        xor: data(sys::NFTNL_EXPR_BITWISE_XOR)?,
                    })
                })()
            }
            b"immediate" if only(&[sys::NFTNL_EXPR_IMM_DREG, sys::NFTNL_EXPR_IMM_VERDICT]) => {
                attr(sys::NFTNL_EXPR_IMM_VERDICT).map(|v| Expr::Verdict { code: v as i32 })
            }
            b"immediate" if only(&[sys::NFTNL_EXPR_IMM_DREG, sys::NFTNL_EXPR_IMM_DATA]) => (|| {
                Some(Expr::Immediate {
                    dreg: attr(sys::NFTNL_EXPR_IMM_DREG)?,
                    data: data(sys::NFTNL_EXPR_IMM_DATA)?,
                })
            })(
            ),
            b"redir" => (|| {
                let min = attr(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN)?;
                // The kernel reports max = min when only min was sent.
                let max = attr(sys::NFTNL_EXPR_REDIR_REG_PROTO_MAX).unwrap_or(min);
                (max == min).then_some(Expr::Redir {
                    reg_proto: min,
                    flags: attr(sys::NFTNL_EXPR_REDIR_FLAGS).unwrap_or(0),
                })
            })(),
            b"nat" => (|| {
                let addr = attr(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN)?;
                let proto = attr(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN)?;
                let same = attr(sys::NFTNL_EXPR_NAT_REG_ADDR_MAX).unwrap_or(addr) == addr
                    && attr(sys::NFTNL_EXPR_NAT_REG_PROTO_MAX).unwrap_or(proto) == proto;
                same.then_some(Expr::Nat {
                    nat_type: attr(sys::NFTNL_EXPR_NAT_TYPE)?,
                    family: attr(sys::NFTNL_EXPR_NAT_FAMILY)?,
                    reg_addr: addr,
                    reg_proto: proto,
                    flags: attr(sys::NFTNL_EXPR_NAT_FLAGS).unwrap_or(0) & !NF_NAT_RANGE_MAP_IPS,
                })
            })(),
            b"masq"
                if attr(sys::NFTNL_EXPR_MASQ_FLAGS).unwrap_or(0) == 0
                    && only(&[sys::NFTNL_EXPR_MASQ_FLAGS]) =>
            {
                Some(Expr::Masq)
            }
            _ => None,
        };
        decoded.unwrap_or_else(other)
    }
}

fn attr_set(e: *const sys::nftnl_expr, a: u32) -> bool {
    // SAFETY: only called from `Expr::decode`, whose caller guarantees `e`
    // is live; `is_set` only reads a flag word.
    unsafe { sys::nftnl_expr_is_set(e, a as u16) }
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

/// Owns a parsed `nftnl_rule` and frees it.
struct RuleGuard(NonNull<sys::nftnl_rule>);

impl Drop for RuleGuard {
    fn drop(&mut self) {
        // SAFETY: we allocated it and nothing else frees it.
        unsafe { sys::nftnl_rule_free(self.0.as_ptr()) }
    }
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

/// Parse an `NFT_MSG_NEWRULE` message (header included) from a dump.
pub(crate) fn parse_rule(raw: &[u8]) -> io::Result<KernelRule> {
    let buf = aligned(raw);
    // SAFETY: allocation has no preconditions; null is checked.
    let rule = RuleGuard(NonNull::new(unsafe { sys::nftnl_rule_alloc() }).ok_or_else(oom)?);
    let r = rule.0.as_ptr();
    // SAFETY: `buf` holds the whole message (its nlmsg_len says so and is
    // within the buffer, checked by the caller's message splitter), aligned
    // for `nlmsghdr`; `r` is a live rule.
    let rc = unsafe { sys::nftnl_rule_nlmsg_parse(buf.as_ptr().cast::<libc::nlmsghdr>(), r) };
    if rc < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "libnftnl cannot parse a rule",
        ));
    }
    // SAFETY: `r` is live; string getters return NUL-terminated strings or null.
    let (table, chain) = unsafe {
        (
            owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16)),
            owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16)),
        )
    };
    // SAFETY: `r` is live; the data pointer covers `len` bytes owned by the
    // rule, copied before the rule is freed.
    let userdata = unsafe {
        let mut len = 0u32;
        if sys::nftnl_rule_is_set(r, sys::NFTNL_RULE_USERDATA as u16) {
            let p = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            if p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec()
            }
        } else {
            Vec::new()
        }
    };
    let mut exprs = Vec::new();
    // SAFETY: `r` is live for the iterator's whole life; the iterator is
    // destroyed before the rule; each expression pointer is used only while
    // the iterator (and rule) live.
    unsafe {
        let iter = sys::nftnl_expr_iter_create(r);
        if iter.is_null() {
            return Err(oom());
        }
        loop {
            let e = sys::nftnl_expr_iter_next(iter);
            if e.is_null() {
                break;
            }
            exprs.push(Expr::decode(e));
        }
        sys::nftnl_expr_iter_destroy(iter);
    }
    Ok(KernelRule {
        table,
        chain,
        exprs,
        userdata,
    })
}

/// Parse an `NFT_MSG_NEWCHAIN` message (header included) from a dump.
pub(crate) fn parse_chain(raw: &[u8]) -> io::Result<KernelChain> {
    let buf = aligned(raw);
    // SAFETY: allocation has no preconditions; null is checked.
    let chain = ChainGuard(NonNull::new(unsafe { sys::nftnl_chain_alloc() }).ok_or_else(oom)?);
    let c = chain.0.as_ptr();
    // SAFETY: as in `parse_rule`: a whole, aligned message and a live chain.
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

    /// Every expression lowport writes survives libnftnl: build it, put it
    /// in a rule, serialize, parse back, decode.
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
        let parsed = parse_rule(&buf[..len]).unwrap();
        assert_eq!(parsed.table, "t");
        assert_eq!(parsed.chain, "c");
        assert_eq!(parsed.exprs, exprs);
    }
}
