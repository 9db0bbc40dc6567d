//! `switchyard healthcheck`: one plain-HTTP GET to a running gateway, answered by its status,
//! so that a container image can check itself without curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Asks `url` (`http://host:port/path`) and succeeds on a 200 within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}`: only http:// URLs are checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{authority}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: switchyard-healthcheck\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match conn.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("{authority}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    match line.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("{url} answered {status}")),
        None => Err(format!("{url} gave no HTTP answer")),
    }
}
