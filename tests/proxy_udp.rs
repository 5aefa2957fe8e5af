//! UDP through `lowport proxy`: whole datagrams of every size, replies from the address the
//! client sent to, IPv6, idle expiry, the flow cap, a backend that goes
//! away and comes back, reloads, socket activation and `protocol: both`.
//! The real binary, in a namespace, as `nobody`. QUIC through the proxy:
//! tests/proxy_quic.rs.

mod common;
mod proxy_support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{require_root, retry_eintr, Lan, Netns};
use proxy_support::*;

/// What the test backend does with a datagram, by its first byte.
const ECHO: u8 = b'e';
/// Swallow it.
const SINK: u8 = b's';
/// Answer with 10 datagrams, 300 ms apart, and nothing else.
const TALK: u8 = b't';
/// Echo it as one GSO send of 1200-byte segments (the sender's kernel
/// keeps the batch whole on loopback, and a receiver with UDP GRO gets it
/// whole: the relay must hand on the segments, not one merged datagram).
const GSO: u8 = b'g';

/// Set UDP_SEGMENT (GSO) on a socket: every send is cut into `size`-byte
/// datagrams; 0 turns it off.
fn set_gso(s: &UdpSocket, size: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A UDP backend in a namespace: echoes, swallows or talks (see above),
/// and records the source address of every datagram. Stopped (its port
/// closed) on drop or by `stop`.
struct Backend {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(SocketAddr, usize)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Netns, addr: &str) -> Backend {
        let addr: SocketAddr = addr.parse().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sock = ns
            .enter(move || UdpSocket::bind(addr))
            .expect("bind the UDP backend");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let (s, v) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            let sock = Arc::new(sock);
            let mut buf = vec![0u8; 1 << 16];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                v.lock().expect("seen").push((from, n));
                match buf.first() {
                    Some(&SINK) => {}
                    Some(&GSO) => {
                        let _ = set_gso(&sock, 1200);
                        let _ = sock.send_to(&buf[..n], from);
                        let _ = set_gso(&sock, 0);
                    }
                    Some(&TALK) => {
                        let sock = Arc::clone(&sock);
                        std::thread::spawn(move || {
                            for i in 0..10u8 {
                                let _ = sock.send_to(&[TALK, i], from);
                                std::thread::sleep(Duration::from_millis(300));
                            }
                        });
                    }
                    _ => {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }
        });
        Backend {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The distinct source ports it has seen, in order of first sight.
    fn ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for (a, _) in self.seen.lock().expect("seen").iter() {
            if !out.contains(&a.port()) {
                out.push(a.port());
            }
        }
        out
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client socket made in `ns` (a socket stays in the namespace it was
/// made in, whichever thread uses it), bound to `bind`.
fn client(ns: &Netns, bind: &str) -> UdpSocket {
    let bind: SocketAddr = bind.parse().expect("addr");
    let s = ns
        .enter(move || UdpSocket::bind(bind))
        .expect("bind client");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Receive one datagram (whole: the buffer is larger than any).
fn recv(s: &UdpSocket) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 1 << 17];
    let (n, from) = retry_eintr(|| s.recv_from(&mut buf))?;
    buf.truncate(n);
    Ok((buf, from))
}

/// Send `msg` to `to` and expect it back, from `to`.
fn echo(s: &UdpSocket, to: &str, msg: &[u8]) -> std::io::Result<()> {
    let to: SocketAddr = to.parse().expect("addr");
    s.send_to(msg, to)?;
    let (back, from) = recv(s)?;
    if back != msg || from != to {
        return Err(std::io::Error::other(format!(
            "echo mismatch: {} bytes from {from}, sent {} to {to}",
            back.len(),
            msg.len()
        )));
    }
    Ok(())
}

/// Nothing arrives within `within`.
fn silent(s: &UdpSocket, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let r = recv(s);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    r.is_err()
}

/// A test's private directory, removed when the test ends (also on failure).
type Dir = TempDir;

fn udp_config(dir_tag: &str, extra: &str) -> (Dir, std::path::PathBuf) {
    let dir = temp_dir(dir_tag);
    let cfg = write_config(
        &dir,
        &format!("mappings:\n  - {{listen: 9443, to: 8443, protocol: udp}}\n{extra}"),
    );
    (dir, cfg)
}

/// A datagram of `len` bytes for flow `flow`, number `seq`: both ends can
/// tell it apart and check every byte.
fn datagram(flow: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    pattern(flow << 32 | seq, 0, &mut d);
    if len > 0 {
        d[0] = ECHO;
    }
    d
}

#[test]
fn datagrams_arrive_whole_and_in_order_with_exact_counts() {
    if !require_root("datagrams_arrive_whole_and_in_order_with_exact_counts") {
        return;
    }
    let ns = Netns::new("pxudpint");
    let _backend = Backend::start(&ns, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config("udpint", "");
    let proxy = Launch::new(&ns, &cfg).start();
    let line = proxy.log_text();
    assert!(line.contains("[::]:9443/udp -> 8443"), "{line}");

    // Every size from 0 to 65,507 in steps, and the edges exactly.
    let mut sizes: Vec<usize> = (0..=65_507).step_by(997).collect();
    sizes.extend([1, 2, 1199, 1200, 1201, 1472, 1473, 8192, 65_506, 65_507]);
    const FLOWS: u64 = 12;
    // A socket's receive buffer (net.core.rmem_default, 208 KiB) holds
    // only a few datagrams of 64 KiB: the kernel would drop the rest of
    // twelve at once, at the proxy's listener or the backend, before any
    // relay saw them. Large datagrams take turns; small ones overlap.
    let large = Arc::new(Mutex::new(()));
    let mut threads = Vec::new();
    for flow in 0..FLOWS {
        let s = client(&ns, "127.0.0.1:0");
        let sizes = sizes.clone();
        let large = Arc::clone(&large);
        threads.push(std::thread::spawn(move || -> (u64, u64) {
            let to: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
            let (mut count, mut bytes) = (0u64, 0u64);
            let mut seq = 0u64;
            // Windows of up to 8 small datagrams, then one at a time for
            // large ones (the socket buffers hold a few hundred KiB): order
            // is checked within each window.
            let mut i = 0;
            while i < sizes.len() {
                let window: Vec<usize> = if sizes[i] <= 1500 {
                    sizes[i..]
                        .iter()
                        .take(8)
                        .take_while(|&&n| n <= 1500)
                        .copied()
                        .collect()
                } else {
                    vec![sizes[i]]
                };
                let sent: Vec<Vec<u8>> = window
                    .iter()
                    .map(|&n| {
                        seq += 1;
                        datagram(flow, seq, n)
                    })
                    .collect();
                let _turn = (sent[0].len() > 1500).then(|| large.lock().expect("turn"));
                for d in &sent {
                    s.send_to(d, to).expect("send");
                }
                for d in &sent {
                    let (back, from) = recv(&s).unwrap_or_else(|e| {
                        panic!("flow {flow}: no answer to a {}-byte datagram: {e}", d.len())
                    });
                    assert_eq!(from, to);
                    assert_eq!(back.len(), d.len(), "flow {flow}: datagram cut or merged");
                    assert!(back == *d, "flow {flow}: datagram out of order or changed");
                    count += 1;
                    bytes += d.len() as u64;
                }
                i += window.len();
            }
            (count, bytes)
        }));
    }
    let (mut count, mut bytes) = (0, 0);
    for t in threads {
        let (c, b) = t.join().expect("flow thread");
        count += c;
        bytes += b;
    }
    let c = udp_counters(&proxy);
    assert_eq!(c["udp_flows_opened"], FLOWS, "{c:?}");
    assert_eq!(c["udp_datagrams_to_backend"], count, "{c:?}");
    assert_eq!(c["udp_datagrams_to_client"], count, "{c:?}");
    assert_eq!(c["udp_bytes_to_backend"], bytes, "{c:?}");
    assert_eq!(c["udp_bytes_to_client"], bytes, "{c:?}");
    assert_eq!(c["udp_dropped_send"], 0, "{c:?}");
}

/// Batches sent with GSO, by the client and by the backend, reach the
/// far end as the datagrams that were sent: never merged, never more.
#[test]
fn gso_batches_arrive_as_the_datagrams_sent() {
    if !require_root("gso_batches_arrive_as_the_datagrams_sent") {
        return;
    }
    let ns = Netns::new("pxudpgso");
    let backend = Backend::start(&ns, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config("udpgso", "");
    let proxy = Launch::new(&ns, &cfg).start();
    let to: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
    let s = client(&ns, "127.0.0.1:0");
    // 10 full segments and a short one, in each direction.
    let mut batch = datagram(1, 1, 12_500);
    for (i, seg) in batch.chunks_mut(1200).enumerate() {
        seg[0] = ECHO;
        seg[1] = i as u8;
    }
    set_gso(&s, 1200).expect("UDP_SEGMENT");
    s.send_to(&batch, to).expect("send a GSO batch");
    set_gso(&s, 0).expect("UDP_SEGMENT off");
    for (i, seg) in batch.chunks(1200).enumerate() {
        let (d, _) = recv(&s).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert_eq!(d, seg, "segment {i}");
    }
    assert!(
        silent(&s, Duration::from_millis(300)),
        "more datagrams than sent"
    );
    assert_eq!(
        backend.count(),
        11,
        "the backend got the batch cut differently"
    );

    let mut batch = datagram(2, 1, 12_500);
    batch[0] = GSO;
    s.send_to(&batch, to).expect("ask for a GSO answer");
    for (i, seg) in batch.chunks(1200).enumerate() {
        let (d, _) = recv(&s).unwrap_or_else(|e| panic!("answer segment {i}: {e}"));
        assert_eq!(d, seg, "answer segment {i}");
    }
    assert!(
        silent(&s, Duration::from_millis(300)),
        "more datagrams than sent"
    );

    // A burst of single datagrams, equal but the last: the relay may send
    // a run of them as one GSO batch; each still arrives on its own, in
    // order.
    let burst: Vec<Vec<u8>> = (0..40)
        .map(|i| datagram(3, i, if i == 39 { 700 } else { 1200 }))
        .collect();
    for d in &burst {
        s.send_to(d, to).expect("send");
    }
    for (i, d) in burst.iter().enumerate() {
        let (back, _) = recv(&s).unwrap_or_else(|e| panic!("burst datagram {i}: {e}"));
        assert!(
            back == *d,
            "burst datagram {i}: {} bytes, changed or out of order",
            back.len()
        );
    }
    assert!(
        silent(&s, Duration::from_millis(300)),
        "more datagrams than sent"
    );
    assert_eq!(backend.count(), 12 + 40);
    let c = udp_counters(&proxy);
    assert_eq!(c["udp_datagrams_to_backend"], 52, "{c:?}");
    assert_eq!(c["udp_datagrams_to_client"], 62, "{c:?}");
}

/// A wildcard listener on a host with two addresses: a client whose
/// socket is connected to the second address accepts only replies from
/// it, so the proxy must answer from the address the client sent to.
/// Also IPv6 (with the IPv6 maximum payload) and an IPv4 client on the
/// same dual-stack socket.
#[test]
fn replies_come_from_the_address_the_client_used() {
    if !require_root("replies_come_from_the_address_the_client_used") {
        return;
    }
    let ns = Netns::new("pxudpaddr");
    ns.ok("ip", &["addr", "add", "10.77.0.2/32", "dev", "lo"]);
    ns.ok(
        "ip",
        &["addr", "add", "fd00:77::2/128", "dev", "lo", "nodad"],
    );
    let _b4 = Backend::start(&ns, "127.0.0.1:8443");
    let _b6 = Backend::start(&ns, "[::1]:8443");
    let (_dir, cfg) = udp_config("udpaddr", "");
    let proxy = Launch::new(&ns, &cfg).start();

    for (bind, to) in [
        ("127.0.0.1:0", "10.77.0.2:9443"),
        ("[::1]:0", "[fd00:77::2]:9443"),
        ("127.0.0.1:0", "127.0.0.1:9443"),
        ("[::1]:0", "[::1]:9443"),
    ] {
        let s = client(&ns, bind);
        s.connect(to).expect("connect the client's socket");
        let msg = datagram(1, 1, 300);
        s.send(&msg).expect("send");
        let mut buf = vec![0u8; 1 << 16];
        let n = retry_eintr(|| s.recv(&mut buf)).unwrap_or_else(|e| {
            panic!(
                "{bind} -> {to}: no reply from {to}: {e}\n{}",
                proxy.log_text()
            )
        });
        assert_eq!(&buf[..n], &msg[..], "{bind} -> {to}");
    }
    // The largest IPv6 payload, whole.
    let s = client(&ns, "[::1]:0");
    echo(&s, "[::1]:9443", &datagram(2, 1, 65_527)).expect("65,527 bytes over IPv6");
    let c = udp_counters(&proxy);
    assert_eq!(c["udp_flows_opened"], 5, "{c:?}");
}

/// Traffic in one direction only keeps a flow (the backend sees one source
/// port); with none for udp_idle_timeout it expires, and the next datagram
/// opens a new flow that works.
#[test]
fn idle_expiry_counts_both_directions() {
    if !require_root("idle_expiry_counts_both_directions") {
        return;
    }
    let ns = Netns::new("pxudpidle");
    let backend = Backend::start(&ns, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config("udpidle", "proxy:\n  udp_idle_timeout: 1s\n");
    let proxy = Launch::new(&ns, &cfg).start();
    let s = client(&ns, "127.0.0.1:0");
    let to = "127.0.0.1:9443";

    // Client → backend only, for three timeouts.
    for _ in 0..10 {
        s.send_to(&[SINK], to).expect("send");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(wait_until(Duration::from_secs(5), || backend.count() >= 10));
    assert_eq!(
        backend.ports().len(),
        1,
        "the flow ended while the client sent"
    );

    // Backend → client only: one datagram asks for ten answers over 3 s.
    s.send_to(&[TALK], to).expect("send");
    for i in 0..10u8 {
        let (d, _) = recv(&s).unwrap_or_else(|e| panic!("answer {i} lost: {e}"));
        assert_eq!(d, [TALK, i]);
    }
    assert_eq!(udp_counters(&proxy)["udp_flows_expired"], 0);

    // Silence: the flow expires.
    let c = wait_until(Duration::from_secs(10), || {
        udp_counters(&proxy)["udp_flows_expired"] == 1
    });
    assert!(c, "the idle flow did not expire");
    echo(&s, to, &datagram(1, 1, 100)).expect("a new flow after expiry");
    let ports = backend.ports();
    assert_eq!(ports.len(), 2, "expected a new flow: {ports:?}");
}

/// At udp_max_flows, datagrams from new clients are dropped and counted;
/// the flows that exist go on, and a new client is served once one expires.
#[test]
fn max_flows_drops_new_clients_only() {
    if !require_root("max_flows_drops_new_clients_only") {
        return;
    }
    let ns = Netns::new("pxudpmax");
    let _backend = Backend::start(&ns, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config(
        "udpmax",
        "proxy:\n  udp_max_flows: 2\n  udp_idle_timeout: 1s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let to = "127.0.0.1:9443";
    let a = client(&ns, "127.0.0.1:0");
    let b = client(&ns, "127.0.0.1:0");
    let c = client(&ns, "127.0.0.1:0");
    echo(&a, to, &datagram(1, 1, 10)).expect("a");
    echo(&b, to, &datagram(2, 1, 10)).expect("b");
    c.send_to(&datagram(3, 1, 10), to).expect("send");
    assert!(
        silent(&c, Duration::from_millis(500)),
        "a third flow was served"
    );
    echo(&a, to, &datagram(1, 2, 10)).expect("a after the cap");
    echo(&b, to, &datagram(2, 2, 10)).expect("b after the cap");
    let n = udp_counters(&proxy);
    assert_eq!(n["udp_dropped_max_flows"], 1, "{n:?}");
    assert_eq!(n["udp_flows_opened"], 2, "{n:?}");
    // a and b fall silent and expire; c is served.
    assert!(wait_until(Duration::from_secs(10), || {
        udp_counters(&proxy)["udp_flows_expired"] == 2
    }));
    echo(&c, to, &datagram(3, 2, 10)).expect("c once the others expired");
}

/// The backend goes away (ICMP port unreachable for each datagram) and
/// comes back: the errors are counted, the proxy does not spin, and the
/// same flow carries on.
#[test]
fn backend_down_then_up_keeps_the_flow() {
    if !require_root("backend_down_then_up_keeps_the_flow") {
        return;
    }
    let ns = Netns::new("pxudpdown");
    let mut backend = Backend::start(&ns, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config("udpdown", "");
    let proxy = Launch::new(&ns, &cfg).start();
    let s = client(&ns, "127.0.0.1:0");
    let to = "127.0.0.1:9443";
    echo(&s, to, &datagram(1, 1, 50)).expect("before");
    let port = backend.ports()[0];
    backend.stop();

    let before = proxy.cpu_ticks();
    for i in 0..20 {
        s.send_to(&datagram(1, 100 + i, 50), to).expect("send");
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = proxy.cpu_ticks() - before;
    assert!(
        used <= 20,
        "proxy used {used} ticks in 2 s with the backend down"
    );
    let c = udp_counters(&proxy);
    assert!(c["udp_icmp_errors"] >= 1, "{c:?}");
    assert_eq!(c["udp_flows_active"], 1, "{c:?}");

    let backend = Backend::start(&ns, "127.0.0.1:8443");
    echo(&s, to, &datagram(1, 2, 50)).expect("after the backend came back");
    assert_eq!(backend.ports(), vec![port], "not the same flow");
}

/// The kernel refuses a GSO send whose segments, with their headers, do
/// not fit the MTU on the way out (udp_send_skb: EMSGSIZE, EINVAL before
/// Linux 6.10), as for a client behind a link with a smaller MTU than
/// loopback's: the relay's batch of replies is refused, it sends the
/// datagrams one by one (fragmented, as a relay must), says so and counts
/// it, and every datagram of the batch arrives whole and in order.
#[test]
fn gso_refused_by_the_kernel_falls_back_to_single_datagrams() {
    if !require_root("gso_refused_by_the_kernel_falls_back_to_single_datagrams") {
        return;
    }
    let lan = Lan::new("pxgsomtu");
    // 1200-byte segments need 1228 bytes with their IPv4 and UDP headers.
    for ns in [&lan.host, &lan.remote] {
        ns.ok("ip", &["link", "set", "eth0", "mtu", "1200"]);
    }
    let backend = Backend::start(&lan.host, "127.0.0.1:8443");
    let (_dir, cfg) = udp_config("udpgsomtu", "");
    let proxy = Launch::new(&lan.host, &cfg).start();
    let to: SocketAddr = format!("{}:9443", Lan::HOST_V4).parse().expect("addr");
    let s = client(&lan.remote, "0.0.0.0:0");
    // The backend answers with one GSO send of 1200-byte segments; the
    // relay reads it as one GRO batch and would send it on as one.
    for round in 1..=2 {
        let mut ask = datagram(round, 1, 6_100);
        ask[0] = GSO;
        s.send_to(&ask, to).expect("ask for a GSO answer");
        for (i, seg) in ask.chunks(1200).enumerate() {
            let (d, from) = recv(&s).unwrap_or_else(|e| panic!("round {round} segment {i}: {e}"));
            assert_eq!(from, to);
            assert_eq!(d, seg, "round {round} segment {i}");
        }
        assert!(
            silent(&s, Duration::from_millis(300)),
            "more datagrams than sent"
        );
    }
    assert_eq!(backend.count(), 2);
    let line = proxy.expect_line("UDP GSO send refused by the kernel", Duration::from_secs(5));
    assert!(
        line.contains("Message too long") || line.contains("Invalid argument"),
        "{line}"
    );
    let c = udp_counters(&proxy);
    assert!(c["udp_gso_fallbacks"] >= 1, "{c:?}");
    assert_eq!(c["udp_datagrams_to_client"], 12, "{c:?}");
    assert_eq!(c["udp_dropped_send"], 0, "{c:?}");
}

/// A UDP target given by name is resolved for each new flow, as TCP's are
/// for each connection: the first datagrams wait for the answer and then go
/// out; a name that does not resolve drops the flow's datagrams, counted,
/// with the reason in the log, and the proxy serves on.
#[test]
fn udp_backend_names_are_resolved() {
    if !require_root("udp_backend_names_are_resolved") {
        return;
    }
    let ns = Netns::new("pxudpname");
    // Names only this namespace knows (`ip netns exec` mounts the file over
    // /etc/hosts): a backend on 127.0.0.2, which no fallback to loopback
    // would reach, and a name that is a multicast group, not a backend.
    ns.etc_file(
        "hosts",
        "127.0.0.1 localhost\n127.0.0.2 backend.lowport.test\n224.0.0.9 group.lowport.test\n",
    );
    let backend = Backend::start(&ns, "127.0.0.2:8443");
    let dir = temp_dir("udpname");
    let cfg = write_config(
        &dir,
        "mappings:\n  - {listen: 9443, to: \"backend.lowport.test:8443\", protocol: udp}\n  - {listen: 9444, to: \"no-such-host.invalid:8443\", protocol: udp}\n  - {listen: 9445, to: \"group.lowport.test:8443\", protocol: udp}\nproxy:\n  connect_timeout: 3s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    for flow in 0..3 {
        let s = client(&ns, "127.0.0.1:0");
        // Three datagrams at once: all wait for the lookup, none is lost.
        let to: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
        let sent: Vec<Vec<u8>> = (0..3)
            .map(|i| datagram(flow, i, 100 + i as usize))
            .collect();
        for d in &sent {
            s.send_to(d, to).expect("send");
        }
        for d in &sent {
            let (back, from) = recv(&s).expect("an answer through a name");
            assert_eq!(from, to);
            assert!(back == *d, "flow {flow}: datagram changed or out of order");
        }
    }
    assert_eq!(backend.ports().len(), 3, "one flow per client");

    let s = client(&ns, "127.0.0.1:0");
    s.send_to(&datagram(9, 1, 10), "127.0.0.1:9444")
        .expect("send");
    let line = proxy.expect_line("no backend for a UDP flow", Duration::from_secs(10));
    assert!(
        line.contains("cannot resolve no-such-host.invalid"),
        "{line}"
    );
    s.send_to(&datagram(9, 2, 10), "127.0.0.1:9445")
        .expect("send");
    let line = proxy.expect_line("no backend for a UDP flow", Duration::from_secs(10));
    assert!(line.contains("224.0.0.9: a multicast address"), "{line}");
    let c = udp_counters(&proxy);
    assert_eq!(c["udp_dropped_unresolved"], 2, "{c:?}");
    assert_eq!(c["udp_flows_active"], 3, "{c:?}");
    assert_eq!(c["udp_datagrams_to_backend"], 9, "{c:?}");
    assert_eq!(c["udp_datagrams_to_client"], 9, "{c:?}");
}

/// SO_RCVBUF of the proxy's UDP socket bound to `port`, as the kernel
/// reports it (twice the bytes it granted), read through a copy of the
/// proxy's descriptor (pidfd_getfd).
fn proxy_rcvbuf(proxy: &Proxy, port: u16) -> usize {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let pid = proxy.pid();
    // SAFETY: pidfd_open on our child's pid, no flags; the fd is owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the proxy's fds");
    for n in fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        // SAFETY: pidfd_getfd with a valid pidfd, no flags; the fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sock = socket2::SockRef::from(&fd);
        let bound = sock.r#type().ok() == Some(socket2::Type::DGRAM)
            && sock
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.port() == port);
        if bound {
            return sock.recv_buffer_size().expect("SO_RCVBUF");
        }
    }
    panic!("the proxy has no UDP socket on port {port}");
}

/// proxy.udp_receive_buffer sizes the UDP listener's receive buffer, up
/// to net.core.rmem_max, which the proxy names when it caps the value;
/// a reload applies a new size to a kept listener.
#[test]
fn udp_receive_buffer_sizes_the_listener() {
    if !require_root("udp_receive_buffer_sizes_the_listener") {
        return;
    }
    let ns = Netns::new("pxudprcv");
    let rmem_max: usize = ns.sysctl("net.core.rmem_max").parse().expect("rmem_max");
    let (dir, cfg) = udp_config("udprcv", "proxy:\n  udp_receive_buffer: 1MiB\n");
    let proxy = Launch::new(&ns, &cfg).start();
    let want = 1 << 20;
    // The event loop takes the socket over just after the start-up line.
    let expected = 2 * want.min(rmem_max);
    assert!(
        wait_until(Duration::from_secs(10), || proxy_rcvbuf(&proxy, 9443)
            == expected),
        "SO_RCVBUF {} is not {expected}",
        proxy_rcvbuf(&proxy, 9443)
    );
    if rmem_max < want {
        let line = proxy.expect_line("net.core.rmem_max", Duration::from_secs(5));
        assert!(
            line.contains(&format!("sysctl -w net.core.rmem_max={want}")),
            "{line}"
        );
    }

    let huge = 1 << 30;
    assert!(
        rmem_max < huge,
        "this test needs net.core.rmem_max below 1 GiB"
    );
    write_config(
        &dir,
        "mappings:\n  - {listen: 9443, to: 8443, protocol: udp}\nproxy:\n  udp_receive_buffer: 1GiB\n",
    );
    proxy.signal(libc::SIGHUP);
    let line = proxy.expect_line(
        "sysctl -w net.core.rmem_max=1073741824",
        Duration::from_secs(10),
    );
    assert!(
        line.contains(&format!("net.core.rmem_max ({rmem_max})")),
        "{line}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || proxy_rcvbuf(&proxy, 9443)
            == 2 * rmem_max),
        "SO_RCVBUF {} after the reload",
        proxy_rcvbuf(&proxy, 9443)
    );
}

/// SIGHUP adds a UDP mapping and removes it again; a live flow on a kept
/// mapping goes on throughout.
#[test]
fn sighup_adds_and_removes_udp_mappings() {
    if !require_root("sighup_adds_and_removes_udp_mappings") {
        return;
    }
    let ns = Netns::new("pxudphup");
    let backend = Backend::start(&ns, "127.0.0.1:8443");
    let (dir, cfg) = udp_config("udphup", "");
    let proxy = Launch::new(&ns, &cfg).start();
    let live = client(&ns, "127.0.0.1:0");
    echo(&live, "127.0.0.1:9443", &datagram(1, 1, 10)).expect("before");

    write_config(
        &dir,
        "mappings:\n  - {listen: 9443, to: 8443, protocol: udp}\n  - {listen: 9444, to: 8443, protocol: udp}\n",
    );
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    echo(&live, "127.0.0.1:9443", &datagram(1, 2, 10)).expect("live flow after a reload");
    let added = client(&ns, "127.0.0.1:0");
    echo(&added, "127.0.0.1:9444", &datagram(2, 1, 10)).expect("the added mapping");

    write_config(
        &dir,
        "mappings:\n  - {listen: 9443, to: 8443, protocol: udp}\n",
    );
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    added
        .send_to(&datagram(2, 2, 10), "127.0.0.1:9444")
        .expect("send");
    assert!(
        silent(&added, Duration::from_millis(500)),
        "9444 still served"
    );
    echo(&live, "127.0.0.1:9443", &datagram(1, 3, 10)).expect("live flow after removal");
    // The live flow never changed its source port.
    let ports = backend.ports();
    assert_eq!(ports.len(), 2, "{ports:?}");

    // SIGTERM: UDP has no end of stream to wait for; the flows close and
    // the proxy exits at once.
    let mut proxy = proxy;
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    live.send_to(&datagram(1, 4, 10), "127.0.0.1:9443")
        .expect("send");
    assert!(
        silent(&live, Duration::from_millis(300)),
        "served after SIGTERM"
    );
}

/// `protocol: both` serves TCP and UDP on one port.
#[test]
fn protocol_both_serves_tcp_and_udp_on_one_port() {
    if !require_root("protocol_both_serves_tcp_and_udp_on_one_port") {
        return;
    }
    let ns = Netns::new("pxudpboth");
    echo_server(&ns, "127.0.0.1:8443");
    let _backend = Backend::start(&ns, "127.0.0.1:8443");
    let dir = temp_dir("udpboth");
    let cfg = write_config(
        &dir,
        "mappings:\n  - {name: web, listen: 9443, to: 8443, protocol: both}\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let line = proxy.log_text();
    assert!(line.contains("[::]:9443 -> 8443"), "{line}");
    assert!(line.contains("[::]:9443/udp -> 8443"), "{line}");
    let mut c = connect_in(&ns, "127.0.0.1:9443").expect("tcp");
    round_trip(&mut c, b"over tcp").expect("tcp echo");
    let s = client(&ns, "127.0.0.1:0");
    echo(&s, "127.0.0.1:9443", &datagram(1, 1, 1200)).expect("udp echo");
}

/// PROXY headers cannot go over UDP: a config error naming the mapping.
#[test]
fn proxy_protocol_on_udp_is_a_config_error() {
    if !require_root("proxy_protocol_on_udp_is_a_config_error") {
        return;
    }
    let ns = Netns::new("pxudppp");
    let dir = temp_dir("udppp");
    let cfg = write_config(
        &dir,
        "mappings:\n  - {name: h3, listen: 9443, to: 8443, protocol: udp, proxy_protocol: v2}\n",
    );
    let out = ns.lowport(&["-c", cfg.to_str().expect("path"), "proxy"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"h3\"") && err.contains("proxy_protocol"),
        "{err}"
    );
}

/// systemd-socket-activate passes a datagram socket on :443; the proxy,
/// with no capability, serves it.
#[test]
fn socket_activation_passes_a_datagram_socket() {
    if !require_root("socket_activation_passes_a_datagram_socket") {
        return;
    }
    if !have_tool(
        "systemd-socket-activate",
        "socket_activation_passes_a_datagram_socket",
    ) {
        return;
    }
    let ns = Netns::new("pxudpsock");
    let _backend = Backend::start(&ns, "127.0.0.1:8443");
    let dir = temp_dir("udpsock");
    let cfg = write_config(
        &dir,
        "mappings:\n  - {name: h3, listen: \"0.0.0.0:443\", to: 8443, protocol: udp}\n",
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec![
        "systemd-socket-activate".into(),
        "--datagram".into(),
        "--listen=0.0.0.0:443".into(),
        "--fdname=h3".into(),
    ];
    let proxy = launch.spawn();
    proxy.expect_line("Listening on", Duration::from_secs(10));
    let s = client(&ns, "127.0.0.1:0");
    // The first datagram starts the service, which then reads it.
    echo(&s, "127.0.0.1:443", &datagram(1, 1, 1200)).expect("through the passed socket");
    let log = proxy.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("lowport proxy listening"))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    assert!(line.contains("0.0.0.0:443/udp"), "{line}");
    assert!(line.contains("socket-activated"), "{line}");
    assert!(line.contains("started as unprivileged"), "{line}");
}
