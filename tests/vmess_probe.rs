//! Active probing against the oxray VMess server: garbage, truncated, replayed, wrong-user,
//! out-of-window and malformed-option requests are all refused without a single byte of reply, valid
//! clients keep working meanwhile, and no socket or task is left behind.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use oxray::config::VmessSecurity;
use oxray::instance::Instance;
use oxray::proxy::vmess::header::{Command, RequestHeader, create_auth_id, encode_command, seal_aead_header};
use oxray::proxy::vmess::{ClientUser, kdf};
use oxray::session::{Address, Destination};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ID: [u8; 16] = [0x11; 16];
const ID_LEGACY: [u8; 16] = [0x22; 16];
const HANDSHAKE: Duration = Duration::from_secs(2);

/// Open descriptors of this process. An unreadable /proc fails the test: a count of 0 would make the
/// leak check below pass whatever leaks.
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The first bytes a real client sends (request header plus one body chunk carrying `data`).
async fn client_bytes(user: &ClientUser, target: &Destination, at: i64, data: &[u8]) -> Vec<u8> {
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let mut s = user.handshake(a, target, at).unwrap();
    s.write_all(data).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let mut out = Vec::new();
    b.read_to_end(&mut out).await.unwrap();
    out
}

/// Sends `bytes`, optionally half-closes, and asserts the server answers with nothing but a close.
/// Returns how long the server took to close.
async fn probe(server: SocketAddr, bytes: Vec<u8>, half_close: bool) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(server).await.map_err(|e| e.to_string())?;
    let _ = s.write_all(&bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(HANDSHAKE + Duration::from_secs(3), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(start.elapsed()),
        Ok(Ok(n)) => Err(format!("server replied {n} bytes to a probe of {} bytes", bytes.len())),
        Err(_) => Err("server neither replied nor closed".into()),
    }
}

fn garbage(len: usize, seed: u64) -> Vec<u8> {
    payload(len, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_get_no_reply_and_nothing_leaks() {
    let (echo, _e) = xor_echo_server().await;
    let server = Instance::new(&vmess_server_config(&[(ID, 0), (ID_LEGACY, 4)], Some(HANDSHAKE)))
        .unwrap()
        .start()
        .await
        .unwrap();
    let server_addr = server.local_addrs()[0].1;
    let client = Instance::new(&vmess_client_config(echo, server_addr, ID, 0, VmessSecurity::Aes128Gcm))
        .unwrap()
        .start()
        .await
        .unwrap();
    let entry = client.local_addrs()[0].1;
    xor_roundtrip(entry, &payload(1000, 1)).await.unwrap();
    let fds_before = fd_count(std::process::id());

    let target = Destination::tcp(Address::from(echo.ip()), echo.port());
    let user = ClientUser::new(&ID, 0, VmessSecurity::Aes128Gcm);
    let legacy_user = ClientUser::new(&ID_LEGACY, 4, VmessSecurity::Aes128Gcm);
    let valid = client_bytes(&user, &target, now(), b"ping").await;
    let valid_legacy = client_bytes(&legacy_user, &target, now(), b"ping").await;

    let mut probes: Vec<(String, Vec<u8>, bool)> = Vec::new();
    // Random garbage of many lengths, kept open or half-closed.
    for i in 0..160u64 {
        let len = [0usize, 1, 15, 16, 17, 41, 42, 43, 100, 600, 3400, 5000][i as usize % 12] + (i as usize / 12);
        probes.push((format!("garbage {len}"), garbage(len, i + 7), i % 3 != 0));
    }
    // A real header cut short at every interesting point.
    for cut in [1usize, 8, 15, 16, 17, 30, 33, 34, 41, 42, 43, 60, 80] {
        probes.push((format!("aead cut {cut}"), valid[..cut.min(valid.len())].to_vec(), true));
        probes.push((format!("legacy cut {cut}"), valid_legacy[..cut.min(valid_legacy.len())].to_vec(), true));
    }
    // A real header with one bit flipped anywhere in it.
    for i in 0..40usize {
        let mut v = client_bytes(&user, &target, now(), b"ping").await;
        let at = (i * 7) % 107;
        v[at] ^= 1 << (i % 8);
        probes.push((format!("aead flip {at}"), v, i % 2 == 0));
    }
    // Wrong UUID, out-of-window timestamps.
    let stranger = ClientUser::new(&[0x33; 16], 0, VmessSecurity::Aes128Gcm);
    probes.push(("wrong uuid".into(), client_bytes(&stranger, &target, now(), b"ping").await, true));
    probes.push((
        "wrong uuid legacy".into(),
        client_bytes(&ClientUser::new(&[0x33; 16], 4, VmessSecurity::None), &target, now(), b"x").await,
        true,
    ));
    for skew in [-400i64, -200, -130, 130, 200, 4000] {
        probes.push((format!("aead time {skew}"), client_bytes(&user, &target, now() + skew, b"ping").await, true));
    }
    probes.push(("legacy time -300".into(), client_bytes(&legacy_user, &target, now() - 300, b"ping").await, true));
    // GlobalPadding without ChunkMasking: a 4.34 server panics on it; oxray refuses it quietly.
    let ck = kdf::cmd_key(&ID);
    let bad = RequestHeader {
        version: 1,
        body_iv: [1; 16],
        body_key: [2; 16],
        v: 9,
        options: 0x09,
        security: 3,
        command: Command::Tcp,
        port: echo.port(),
        address: Address::from(echo.ip()),
    };
    let mut cmd = Vec::new();
    encode_command(&bad, 0, &mut cmd).unwrap();
    let mut wire = Vec::new();
    seal_aead_header(&ck, &create_auth_id(&ck, now(), [5; 4]), &[6; 8], &cmd, &mut wire);
    probes.push(("options 0x09".into(), wire, true));
    // Security AUTO (2) on the wire is refused too.
    let mut auto = bad.clone();
    auto.options = 0x0d;
    auto.security = 2;
    auto.body_key = [3; 16];
    let mut cmd = Vec::new();
    encode_command(&auto, 0, &mut cmd).unwrap();
    let mut wire = Vec::new();
    seal_aead_header(&ck, &create_auth_id(&ck, now(), [7; 4]), &[8; 8], &cmd, &mut wire);
    probes.push(("security auto".into(), wire, true));
    assert!(probes.len() >= 200, "only {} probes", probes.len());

    // The valid recorded request works once (the echo answers)...
    for (name, bytes) in [("aead", &valid), ("legacy", &valid_legacy)] {
        let mut s = TcpStream::connect(server_addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "{name}: the genuine request got no answer");
    }
    // ...and its replay gets nothing.
    probes.push(("aead replay".into(), valid.clone(), false));
    probes.push(("legacy replay".into(), valid_legacy.clone(), false));

    // Fire every probe at once while valid clients keep going.
    let total = probes.len();
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|(name, bytes, half)| tokio::spawn(async move { (name, half, probe(server_addr, bytes, half).await) }))
        .collect();
    for i in 0..10 {
        xor_roundtrip(entry, &payload(20_000 + i, 50 + i as u64)).await.expect("valid client during probing");
    }
    let mut slow_closes = 0;
    for t in tasks {
        let (name, half, r) = t.await.unwrap();
        match r {
            Ok(took) => {
                if !half && took >= HANDSHAKE - Duration::from_millis(300) {
                    slow_closes += 1;
                }
            }
            Err(e) => panic!("probe {name}: {e}"),
        }
    }
    // Probes that keep the connection open and send less than the drain size hang until the
    // handshake deadline, like a slow server; the replays at least do.
    assert!(slow_closes >= 2, "expected kept-open probes to be held until the deadline ({slow_closes})");
    eprintln!("{total} probes refused silently");

    xor_roundtrip(entry, &payload(100_000, 99)).await.expect("valid client after probing");
    let settled = wait_until(Duration::from_secs(10), || async { fd_count(std::process::id()) <= fds_before }).await;
    assert!(settled, "fd leak: {} open before, {} after", fds_before, fd_count(std::process::id()));
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}
