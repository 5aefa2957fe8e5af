//! PROXY protocol v1 and v2, checked by a parser lowport did not write:
//! nginx (`listen ... proxy_protocol`) in the test namespace answers with
//! the client and server addresses it decoded.

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use common::{require_root, Lan};
use proxy_support::*;

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn http_get(from: &common::Netns, addr: SocketAddr) -> (String, u16) {
    from.enter(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let port = s.local_addr().expect("local").port();
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        let body = resp
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned();
        (body, port)
    })
}

#[test]
fn proxy_protocol_v1_and_v2_as_nginx_reads_them() {
    if !require_root("proxy_protocol_v1_and_v2_as_nginx_reads_them") {
        return;
    }
    let Some(nginx) = nginx_binary() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "nginx missing under CI (scripts/setup-debian installs nginx-light)"
        );
        eprintln!("SKIPPED proxy_protocol_v1_and_v2_as_nginx_reads_them: nginx missing");
        return;
    };
    let mut lan = Lan::new("pxngx");
    let dir = temp_dir("nginx");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            // One process (no master): killing it on drop leaves no
            // orphaned worker behind in the deleted namespace.
            "daemon off;\nmaster_process off;\nuser nobody nogroup;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
               fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
               server {{\n    listen 127.0.0.1:8081 proxy_protocol;\n    listen 127.0.0.1:8082 proxy_protocol;\n\
                 location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port \
                 $proxy_protocol_server_addr $proxy_protocol_server_port\\n\"; }}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .expect("nginx.conf");
    let child = lan
        .host
        .command(nginx)
        .args(["-c", conf.to_str().expect("path"), "-p"])
        .arg(&*dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    lan.host.adopt(child);
    assert!(
        wait_until(Duration::from_secs(10), || connect_in(
            &lan.host,
            "127.0.0.1:8081"
        )
        .is_ok()),
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );

    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 127.0.0.1:8081\n    proxy_protocol: v1\n\
         \x20 - listen: 9081\n    to: 127.0.0.1:8082\n    proxy_protocol: v2\n",
    );
    let proxy = Launch::new(&lan.host, &cfg).start();

    for port in [9080u16, 9081] {
        // IPv4 client on the dual-stack listener (arrives v4-mapped).
        let (body, client_port) = http_get(
            &lan.remote,
            SocketAddr::new(Lan::HOST_V4.parse().expect("ip"), port),
        );
        assert_eq!(
            body,
            format!("{} {client_port} {} {port}", Lan::REMOTE_V4, Lan::HOST_V4),
            "port {port}\n{}",
            proxy.log_text()
        );
        // IPv6 client.
        let (body, client_port) = http_get(
            &lan.remote,
            SocketAddr::new(Lan::HOST_V6.parse().expect("ip"), port),
        );
        assert_eq!(
            body,
            format!("{} {client_port} {} {port}", Lan::REMOTE_V6, Lan::HOST_V6),
            "port {port}"
        );
    }
}
