//! The reverse proxy's control message, protobuf `v2ray.core.app.reverse.Control` (PROTOCOLS.md §5.3),
//! hand-rolled: `State state = 1` (varint, omitted when ACTIVE) and `bytes random = 99` (key `9a 06`).

/// `state`: field 1, wire type 0.
const KEY_STATE: u64 = 1 << 3;
/// `random`: field 99, wire type 2.
const KEY_RANDOM: u64 = (99 << 3) | 2;
/// `FillInRandom` uses `dice.Roll(64)`: 0..=63 bytes.
const MAX_HEARTBEAT_RANDOM: usize = 63;

/// The portal's instruction to the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlState {
    /// Keep using this connection (proto value 0).
    Active,
    /// Stop picking this connection; dial a new one (proto value 1).
    Drain,
}

/// Why bytes are not a valid `Control` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The message ended inside a field.
    #[error("control message truncated")]
    Truncated,
    /// A varint longer than 10 bytes.
    #[error("control message has an overlong varint")]
    Varint,
    /// Wire types 3/4 (groups), 6, 7, or field number 0.
    #[error("control message has invalid wire type {0}")]
    WireType(u8),
    /// A wire type that does not match the known field.
    #[error("control field {0} has the wrong wire type")]
    FieldType(u64),
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// Active or Drain.
    pub state: ControlState,
    /// Padding that makes heartbeats differ in size.
    pub random: Vec<u8>,
}

impl Control {
    /// Appends the protobuf encoding; an ACTIVE message with no random bytes encodes to nothing.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.state == ControlState::Drain {
            put_varint(out, KEY_STATE);
            put_varint(out, 1);
        }
        if !self.random.is_empty() {
            put_varint(out, KEY_RANDOM);
            put_varint(out, self.random.len() as u64);
            out.extend_from_slice(&self.random);
        }
    }

    /// Parses a message; unknown fields are skipped, unknown enum values count as Active (proto3 open enum,
    /// and the bridge only acts on DRAIN).
    pub fn decode(mut bytes: &[u8]) -> Result<Control, ControlError> {
        let mut msg = Control { state: ControlState::Active, random: Vec::new() };
        while !bytes.is_empty() {
            let key = get_varint(&mut bytes)?;
            let field = key >> 3;
            let wire = (key & 7) as u8;
            if field == 0 {
                return Err(ControlError::WireType(wire));
            }
            match (field, wire) {
                (1, 0) => {
                    msg.state = if get_varint(&mut bytes)? == 1 { ControlState::Drain } else { ControlState::Active };
                }
                (99, 2) => msg.random = take_len_delimited(&mut bytes)?.to_vec(),
                (1, _) | (99, _) => return Err(ControlError::FieldType(field)),
                (_, 0) => {
                    get_varint(&mut bytes)?;
                }
                (_, 1) => skip(&mut bytes, 8)?,
                (_, 2) => {
                    take_len_delimited(&mut bytes)?;
                }
                (_, 5) => skip(&mut bytes, 4)?,
                (_, w) => return Err(ControlError::WireType(w)),
            }
        }
        Ok(msg)
    }

    /// A heartbeat in `state` with 0..=63 random bytes, like Go's `FillInRandom`.
    pub fn heartbeat(state: ControlState) -> Control {
        let mut pick = [0u8; 1];
        // A failing system RNG only makes the padding predictable; the message stays valid.
        let len = match aws_lc_rs::rand::fill(&mut pick) {
            Ok(()) => pick[0] as usize % (MAX_HEARTBEAT_RANDOM + 1),
            Err(_) => 0,
        };
        let mut random = vec![0u8; len];
        if aws_lc_rs::rand::fill(&mut random).is_err() {
            random.clear();
        }
        Control { state, random }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Result<u64, ControlError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first().ok_or(ControlError::Truncated)?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ControlError::Varint)
}

fn take_len_delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], ControlError> {
    let len = get_varint(bytes)?;
    let len = usize::try_from(len).map_err(|_| ControlError::Truncated)?;
    if len > bytes.len() {
        return Err(ControlError::Truncated);
    }
    let (field, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(field)
}

fn skip(bytes: &mut &[u8], n: usize) -> Result<(), ControlError> {
    *bytes = bytes.get(n..).ok_or(ControlError::Truncated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_active_drain_empty() {
        let mut out = Vec::new();
        Control { state: ControlState::Active, random: vec![7; 45] }.encode(&mut out);
        assert_eq!(&out[..3], &[0x9a, 0x06, 0x2d]);
        assert_eq!(out.len(), 48);
        assert_eq!(Control::decode(&out).unwrap().random, vec![7; 45]);

        out.clear();
        Control { state: ControlState::Drain, random: vec![1; 33] }.encode(&mut out);
        assert_eq!(&out[..5], &[0x08, 0x01, 0x9a, 0x06, 0x21]);
        assert_eq!(out.len(), 38);
        assert_eq!(Control::decode(&out).unwrap().state, ControlState::Drain);

        out.clear();
        Control { state: ControlState::Active, random: vec![] }.encode(&mut out);
        assert!(out.is_empty());
        assert_eq!(Control::decode(&[]).unwrap(), Control { state: ControlState::Active, random: vec![] });
    }

    #[test]
    fn unknown_fields_skipped_and_errors() {
        // field 2 varint, field 3 fixed64, field 4 bytes, field 5 fixed32, then DRAIN.
        let msg = [0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x22, 2, 9, 9, 0x2d, 1, 2, 3, 4, 0x08, 0x01];
        assert_eq!(Control::decode(&msg).unwrap().state, ControlState::Drain);
        assert_eq!(Control::decode(&[0x9a, 0x06, 0x05, 1]), Err(ControlError::Truncated));
        assert_eq!(Control::decode(&[0x13]), Err(ControlError::WireType(3)));
        assert_eq!(Control::decode(&[0x0a, 0]), Err(ControlError::FieldType(1)));
        assert_eq!(Control::decode(&[0xff; 11]), Err(ControlError::Varint));
    }

    #[test]
    fn heartbeat_sizes() {
        for _ in 0..200 {
            let h = Control::heartbeat(ControlState::Active);
            assert!(h.random.len() <= 63);
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(Control::decode(&out).unwrap(), h);
        }
    }

    proptest! {
        #[test]
        fn roundtrip(drain: bool, random in proptest::collection::vec(any::<u8>(), 0..300)) {
            let c = Control { state: if drain { ControlState::Drain } else { ControlState::Active }, random };
            let mut out = Vec::new();
            c.encode(&mut out);
            prop_assert_eq!(Control::decode(&out).unwrap(), c);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Control::decode(&bytes);
        }
    }
}
