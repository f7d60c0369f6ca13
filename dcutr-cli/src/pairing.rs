//! Pairing with a short code, as magic-wormhole does: the two peers share a
//! code, the relay sees only a name derived from part of it, and a PAKE
//! (SPAKE2) over the relayed stream turns the code into a key that
//! authenticates the fingerprints of the certificates the direct
//! connection is then pinned to.
//!
//! # The code
//! `NNNN-xxxx-xxxx`: a **nameplate** of [`NAMEPLATE_DIGITS`] digits, then
//! a **secret** of [`SECRET_CHARS`] characters from a 31-letter alphabet
//! (about 39.6 bits). The relay learns only the rendezvous name
//! `np-` + hex(SHA-256(`"dcutr/nameplate/v1:"` + nameplate))[..16]; the
//! secret never leaves the two peers, so the relay cannot even try the code
//! offline. The PAKE's password is the whole code. A code without a `-`
//! (for example from the deprecated `--name`) is all nameplate: the relay
//! could then guess it offline, so use generated codes.
//!
//! # Wire (on the relayed stream, right after `paired`, before DCUtR)
//! ```text
//! each side:  "dcutrpk1" || SPAKE2 message              (8 + 33 bytes)
//! each side:  fingerprint || HMAC-SHA256(K, "dcutr/confirm/v1" || side || fingerprint)
//!                                                        (32 + 32 bytes)
//! ```
//! `K` is the SPAKE2 key, `side` one byte (1 = the initiator, B; 2 = the
//! responder, A), so a relay that reflects a side's own messages back is
//! caught. A wrong code gives each side a different `K`: the HMAC does not
//! verify and pairing fails with [`PairingError::WrongCode`] on both ends.
//! What a side accepts is the peer's fingerprint, which the upgrade then
//! pins ([`dcutr_driver::Options::peer_fingerprint`]).
//!
//! A stranger (or the relay) who guesses the nameplate gets one online
//! guess at the secret per pairing, and the honest peer sees the failure.

use std::fmt;
use std::time::Duration;

use dcutr_driver::Fingerprint;
use ring::rand::SecureRandom;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::rendezvous::PairedSide;

/// Digits of the nameplate: 10,000 rendezvous names, plenty for one relay
/// at a time; a taken one is drawn again.
pub const NAMEPLATE_DIGITS: usize = 4;

/// Characters of the secret, log2(31) bits each: about 39.6 bits, so one
/// online guess succeeds with p below 10^-11.
pub const SECRET_CHARS: usize = 8;

/// Longest code accepted, in bytes: what a person types, with room.
pub const MAX_CODE_LEN: usize = 64;

/// How long the PAKE exchange may take: two messages each way over the
/// relay; the margin is for TCP retransmissions on a lossy path.
pub const PAIRING_TIMEOUT: Duration = Duration::from_secs(30);

/// The secret's alphabet: digits and lowercase letters without `0 1 i l o`
/// (31 symbols), so a code read aloud or retyped does not go wrong.
const ALPHABET: &[u8; 31] = b"23456789abcdefghjkmnpqrstuvwxyz";

const MAGIC: &[u8; 8] = b"dcutrpk1";
const PAKE_ID: &[u8] = b"dcutr/pair/v1";
const CONFIRM_LABEL: &[u8] = b"dcutr/confirm/v1";
const NAMEPLATE_LABEL: &[u8] = b"dcutr/nameplate/v1:";
/// Length of a SPAKE2 message over Ed25519.
const PAKE_MSG_LEN: usize = 33;

/// Bytes each side writes on the relayed stream for the pairing, before
/// DCUtR's `Hello`: the PAKE message, then the fingerprint and its MAC
/// (105). A relay cut "after the n-th DCUtR byte" must add twice this.
pub const PAIRING_BYTES_EACH_WAY: usize = MAGIC.len() + PAKE_MSG_LEN + 32 + 32;

/// A pairing code.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    text: String,
    nameplate_len: usize,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        write!(f, "Code({}-…)", &self.text[..self.nameplate_len])
    }
}

impl Code {
    /// A fresh code from the OS's random source.
    ///
    /// # Errors
    /// When the OS has no randomness to give.
    pub fn generate() -> anyhow::Result<Code> {
        let rng = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; NAMEPLATE_DIGITS + SECRET_CHARS];
        rng.fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("no OS randomness for a pairing code"))?;
        let mut text = String::new();
        for b in &bytes[..NAMEPLATE_DIGITS] {
            text.push(char::from(b'0' + b % 10));
        }
        for (i, b) in bytes[NAMEPLATE_DIGITS..].iter().enumerate() {
            if i % 4 == 0 {
                text.push('-');
            }
            // 256 = 8 * 31 + 8: the first 8 symbols are a shade likelier.
            text.push(char::from(ALPHABET[usize::from(b % 31)]));
        }
        Code::parse(&text).map_err(anyhow::Error::msg)
    }

    /// Reads a code as typed: `NNNN-secret`, or any short word without a
    /// `-` (all nameplate, weak). Letters are taken in lowercase.
    ///
    /// # Errors
    /// An empty or overlong code, or one with characters outside
    /// `A-Z a-z 0-9 _ . -`.
    pub fn parse(text: &str) -> Result<Code, String> {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() || text.len() > MAX_CODE_LEN {
            return Err(format!(
                "a code has 1 to {MAX_CODE_LEN} characters, got {}",
                text.len()
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!("a code holds only A-Z a-z 0-9 _ . - (found {c:?})"));
        }
        let nameplate_len = text.find('-').unwrap_or(text.len());
        if nameplate_len == 0 {
            return Err("a code starts with its nameplate, not with '-'".to_owned());
        }
        Ok(Code {
            text,
            nameplate_len,
        })
    }

    /// The name both peers use at the relay: derived from the nameplate
    /// alone, so it tells the relay nothing about the secret.
    #[must_use]
    pub fn relay_name(&self) -> String {
        let mut input = NAMEPLATE_LABEL.to_vec();
        input.extend_from_slice(&self.text.as_bytes()[..self.nameplate_len]);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("np-{hex}")
    }

    /// Whether the code has a secret part the relay never sees.
    #[must_use]
    pub fn has_secret(&self) -> bool {
        self.nameplate_len < self.text.len()
    }
}

/// Why pairing failed.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// The other end did not prove knowledge of the code: a different
    /// code, or someone else answered at the relay.
    #[error(
        "pairing failed: the other peer did not prove the code (a wrong code, or someone else \
         answered at the relay)"
    )]
    WrongCode,
    /// The other end did not speak the pairing protocol.
    #[error("pairing failed: the other peer does not speak the pairing protocol")]
    NotPairing,
    /// The exchange did not finish in time.
    #[error("pairing failed: no answer within {PAIRING_TIMEOUT:?}")]
    TimedOut,
    /// The relayed stream failed.
    #[error("pairing failed: the relayed stream broke: {0}")]
    Io(#[from] std::io::Error),
}

fn side_byte(side: PairedSide) -> u8 {
    match side {
        PairedSide::Initiator => 1,
        PairedSide::Responder => 2,
    }
}

fn confirm_tag(key: &ring::hmac::Key, side: PairedSide, fingerprint: &Fingerprint) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(CONFIRM_LABEL);
    ctx.update(&[side_byte(side)]);
    ctx.update(fingerprint);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Runs the PAKE over `stream` as `side` with `code`, sends our
/// certificate's fingerprint under its key, and returns the peer's,
/// authenticated. Reads exactly its own messages, so the bytes after them
/// (the DCUtR exchange) stay in `stream`.
///
/// # Errors
/// [`PairingError`].
pub async fn authenticate<S>(
    stream: &mut S,
    code: &Code,
    side: PairedSide,
    ours: Fingerprint,
) -> Result<Fingerprint, PairingError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(PAIRING_TIMEOUT, exchange(stream, code, side, ours))
        .await
        .map_err(|_| PairingError::TimedOut)?
}

async fn exchange<S>(
    stream: &mut S,
    code: &Code,
    side: PairedSide,
    ours: Fingerprint,
) -> Result<Fingerprint, PairingError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (pake, message) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(code.text.as_bytes()),
        &Identity::new(PAKE_ID),
    );
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&message);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut theirs = [0u8; MAGIC.len() + PAKE_MSG_LEN];
    stream.read_exact(&mut theirs).await?;
    if theirs[..MAGIC.len()] != MAGIC[..] {
        return Err(PairingError::NotPairing);
    }
    let key = pake
        .finish(&theirs[MAGIC.len()..])
        .map_err(|_| PairingError::NotPairing)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut confirm = ours.to_vec();
    confirm.extend_from_slice(&confirm_tag(&key, side, &ours));
    stream.write_all(&confirm).await?;
    stream.flush().await?;
    let mut answer = [0u8; 64];
    stream.read_exact(&mut answer).await?;
    let mut peer = [0u8; 32];
    peer.copy_from_slice(&answer[..32]);
    let peer_side = match side {
        PairedSide::Initiator => PairedSide::Responder,
        PairedSide::Responder => PairedSide::Initiator,
    };
    let mut signed = CONFIRM_LABEL.to_vec();
    signed.push(side_byte(peer_side));
    signed.extend_from_slice(&peer);
    // `verify` compares in constant time.
    ring::hmac::verify(&key, &signed, &answer[32..]).map_err(|_| PairingError::WrongCode)?;
    if peer == ours {
        // Our own messages, reflected.
        return Err(PairingError::WrongCode);
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_a_nameplate_and_a_secret_the_relay_name_hides() {
        let a = Code::generate().unwrap();
        let b = Code::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.has_secret());
        let text = a.to_string();
        assert_eq!(text.len(), NAMEPLATE_DIGITS + SECRET_CHARS + 2, "{text}");
        assert!(text[..NAMEPLATE_DIGITS].bytes().all(|c| c.is_ascii_digit()));
        let name = a.relay_name();
        assert!(crate::rendezvous::validate_name(&name).is_ok(), "{name}");
        assert!(!name.contains(&text[NAMEPLATE_DIGITS + 1..]));
        // Only the nameplate decides the relay name.
        let same_plate = Code::parse(&format!("{}-zzzz-zzzz", &text[..NAMEPLATE_DIGITS])).unwrap();
        assert_eq!(same_plate.relay_name(), name);
        assert!(!format!("{a:?}").contains(&text[NAMEPLATE_DIGITS + 1..]));
    }

    #[test]
    fn codes_are_checked() {
        assert!(Code::parse("").is_err());
        assert!(Code::parse("-abc").is_err());
        assert!(Code::parse("12 34").is_err());
        assert!(Code::parse(&"1".repeat(MAX_CODE_LEN + 1)).is_err());
        assert_eq!(Code::parse(" 12-AB ").unwrap().to_string(), "12-ab");
        assert!(!Code::parse("b").unwrap().has_secret());
    }

    async fn pair(
        code_b: &str,
        code_a: &str,
    ) -> (Result<Fingerprint, String>, Result<Fingerprint, String>) {
        let (mut b, mut a) = tokio::io::duplex(1024);
        let (cb, ca) = (Code::parse(code_b).unwrap(), Code::parse(code_a).unwrap());
        let (rb, ra) = tokio::join!(
            authenticate(&mut b, &cb, PairedSide::Initiator, [1; 32]),
            authenticate(&mut a, &ca, PairedSide::Responder, [2; 32]),
        );
        (rb.map_err(|e| e.to_string()), ra.map_err(|e| e.to_string()))
    }

    #[tokio::test]
    async fn the_same_code_authenticates_each_sides_fingerprint() {
        // Also: each side writes exactly the bytes the constant says.
        let (mut b, mut tap) = tokio::io::duplex(1024);
        let code = Code::parse("1234-abcd-efgh").unwrap();
        let (mut a, mut a_end) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            let mut from_b = [0u8; PAIRING_BYTES_EACH_WAY];
            let mut from_a = [0u8; PAIRING_BYTES_EACH_WAY];
            tap.read_exact(&mut from_b[..41]).await.unwrap();
            a_end.read_exact(&mut from_a[..41]).await.unwrap();
            a_end.write_all(&from_b[..41]).await.unwrap();
            tap.write_all(&from_a[..41]).await.unwrap();
            tap.read_exact(&mut from_b[41..]).await.unwrap();
            a_end.read_exact(&mut from_a[41..]).await.unwrap();
            a_end.write_all(&from_b[41..]).await.unwrap();
            tap.write_all(&from_a[41..]).await.unwrap();
        });
        let (rb, ra) = tokio::join!(
            authenticate(&mut b, &code, PairedSide::Initiator, [1; 32]),
            authenticate(&mut a, &code, PairedSide::Responder, [2; 32]),
        );
        relay.await.unwrap();
        assert_eq!((rb.unwrap(), ra.unwrap()), ([2; 32], [1; 32]));
        let (b, a) = pair("1234-abcd-efgh", "1234-abcd-efgh").await;
        assert_eq!(b, Ok([2; 32]), "B learns A's fingerprint");
        assert_eq!(a, Ok([1; 32]), "A learns B's fingerprint");
    }

    #[tokio::test]
    async fn a_wrong_code_fails_on_both_sides() {
        let (b, a) = pair("1234-abcd-efgh", "1234-abcd-efgj").await;
        for r in [b, a] {
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.contains("did not prove the code")),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn reflected_messages_do_not_pair() {
        // A relay that sends a side's own bytes back to it.
        let (mut ours, mut relay) = tokio::io::duplex(1024);
        let code = Code::parse("1234-abcd-efgh").unwrap();
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; PAIRING_BYTES_EACH_WAY];
            relay.read_exact(&mut buf[..41]).await.unwrap();
            relay.write_all(&buf[..41]).await.unwrap();
            relay.read_exact(&mut buf[41..]).await.unwrap();
            relay.write_all(&buf[41..]).await.unwrap();
        });
        let result = authenticate(&mut ours, &code, PairedSide::Initiator, [1; 32]).await;
        assert!(result.is_err(), "{result:?}");
        let _ = echo.await;
    }
}
