//! Mux.Cool frame decoder on arbitrary bytes: never panics, decoding whole or in two pieces agrees, and
//! every decoded frame re-encodes to bytes that decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use oxray::mux::frame::{Frame, FrameError, decode};

fn decode_all(buf: &mut BytesMut) -> (Vec<Frame>, Option<FrameError>) {
    let mut out = Vec::new();
    loop {
        match decode(buf) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (frames, err) = decode_all(&mut BytesMut::from(data));

    // Split delivery: first byte picks the cut.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut buf = BytesMut::from(&data[..cut]);
    let (mut split, mut split_err) = decode_all(&mut buf);
    if split_err.is_none() {
        buf.extend_from_slice(&data[cut..]);
        let (rest, e) = decode_all(&mut buf);
        split.extend(rest);
        split_err = e;
    }
    assert_eq!(frames, split);
    assert_eq!(err, split_err);

    for f in frames {
        let mut wire = Vec::new();
        if f.encode(&mut wire).is_ok() {
            let again = decode(&mut BytesMut::from(&wire[..])).expect("re-encoded frame decodes");
            assert_eq!(again.as_ref(), Some(&f));
        }
    }
});
