//! Signature checks a batch of fetched messages hands to a second thread.
//!
//! Checking each sender's Ed25519 signature is the largest single cost of taking in a
//! backlog, and openmls checks it inside `process_message`, between decrypting (which
//! must go in order) and storing. While a batch is processed in one transaction, the
//! [`BatchCrypto`] provider answers openmls's signature checks at once and queues them on
//! [`DeferredSignatures`], whose thread checks them exactly as openmls's own provider does
//! (`verify_strict`, each key decoded once per batch) while the batch goes on; at its
//! end the batch's own thread takes a share of what is left. The batch may only commit
//! when every one of them held ([`DeferredSignatures::all_valid`]); when one did not, the
//! caller rolls the whole batch back and processes it again with every signature checked
//! in place, so a forged message is refused exactly as it always was and nothing it
//! caused is ever stored.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tls_codec::SecretVLBytes;

/// Batches at least this long check their signatures on a second thread; a shorter one
/// (a pushed message, say) is not worth starting it.
pub(crate) const DEFER_FROM: usize = 16;

struct Check {
    data: Vec<u8>,
    key: Vec<u8>,
    signature: Vec<u8>,
}

/// The checks waiting, shared by the checking thread and, at the end, the batch's own.
struct Queue {
    checks: VecDeque<Check>,
    /// Nothing more comes: whoever takes the last check is done.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    more: Condvar,
    forged: AtomicBool,
}

impl Shared {
    /// The next check; waits for one unless `wait` is false or the queue is closed.
    fn next(&self, wait: bool) -> Option<Check> {
        let mut queue = self.queue.lock().ok()?;
        loop {
            if let Some(check) = queue.checks.pop_front() {
                return Some(check);
            }
            if queue.closed || !wait {
                return None;
            }
            queue = self.more.wait(queue).ok()?;
        }
    }

    /// Checks until nothing is left (waiting for more while the queue is open if `wait`).
    fn work(&self, wait: bool) {
        let mut keys = Keys::default();
        while let Some(check) = self.next(wait) {
            if !self.forged.load(Ordering::Relaxed) && !keys.verify(&check) {
                self.forged.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Ed25519 public keys already decoded (a point decompression each), by their bytes.
#[derive(Default)]
struct Keys(HashMap<[u8; 32], ed25519_dalek::VerifyingKey>);

impl Keys {
    /// What openmls_rust_crypto's `verify_signature` answers for Ed25519, with the key
    /// decoded once per batch instead of once per message.
    fn verify(&mut self, check: &Check) -> bool {
        let Ok(bytes) = <[u8; 32]>::try_from(check.key.as_slice()) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&check.signature) else {
            return false;
        };
        let key = match self.0.entry(bytes) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => match ed25519_dalek::VerifyingKey::from_bytes(&bytes) {
                Ok(key) => new.insert(key),
                Err(_) => return false,
            },
        };
        key.verify_strict(&check.data, &signature).is_ok()
    }
}

/// Signature checks running on their own thread for one batch.
pub(crate) struct DeferredSignatures {
    shared: Arc<Shared>,
    worker: std::thread::JoinHandle<()>,
}

impl DeferredSignatures {
    /// Starts the checking thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                checks: VecDeque::new(),
                closed: false,
            }),
            more: Condvar::new(),
            forged: AtomicBool::new(false),
        });
        let theirs = shared.clone();
        let worker = std::thread::Builder::new()
            .name("signature check".into())
            .spawn(move || theirs.work(true))?;
        Ok(Self { shared, worker })
    }

    /// Queues one Ed25519 check; false when that cannot be done (the caller checks in
    /// place).
    fn defer(&self, data: &[u8], key: &[u8], signature: &[u8]) -> bool {
        let Ok(mut queue) = self.shared.queue.lock() else {
            return false;
        };
        queue.checks.push_back(Check {
            data: data.to_vec(),
            key: key.to_vec(),
            signature: signature.to_vec(),
        });
        self.shared.more.notify_one();
        true
    }

    /// Waits for every queued check, taking a share of those left: true only when each
    /// one held.
    pub(crate) fn all_valid(self) -> bool {
        let Ok(mut queue) = self.shared.queue.lock() else {
            return false;
        };
        queue.closed = true;
        drop(queue);
        self.shared.more.notify_all();
        self.shared.work(false);
        self.worker.join().is_ok() && !self.shared.forged.load(Ordering::Relaxed)
    }
}

/// openmls's crypto provider for a batch: RustCrypto, with Ed25519 signature checks
/// queued on `deferred` when there is one.
pub(crate) struct BatchCrypto<'a> {
    rust: &'a RustCrypto,
    deferred: Option<&'a DeferredSignatures>,
}

impl<'a> BatchCrypto<'a> {
    pub(crate) fn new(rust: &'a RustCrypto, deferred: Option<&'a DeferredSignatures>) -> Self {
        Self { rust, deferred }
    }
}

impl OpenMlsCrypto for BatchCrypto<'_> {
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        match self.deferred {
            Some(deferred)
                if alg == SignatureScheme::ED25519 && deferred.defer(data, pk, signature) =>
            {
                Ok(())
            }
            _ => self.rust.verify_signature(alg, data, pk, signature),
        }
    }

    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.rust.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.rust.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.rust.signature_key_gen(alg)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.rust.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.rust.hpke_setup_sender_and_export(
            config,
            pk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.rust.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.rust.derive_hpke_keypair(config, ikm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::signatures::Signer;

    fn signed(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let pair = SignatureKeyPair::new(SignatureScheme::ED25519).expect("a key");
        let signature = pair.sign(data).expect("signed");
        (pair.public().to_vec(), signature)
    }

    #[test]
    fn deferred_checks_hold_only_when_every_signature_does() {
        let rust = RustCrypto::default();
        let (key, signature) = signed(b"hello");
        let good = DeferredSignatures::start().expect("started");
        let crypto = BatchCrypto::new(&rust, Some(&good));
        for _ in 0..3 {
            assert!(crypto
                .verify_signature(SignatureScheme::ED25519, b"hello", &key, &signature)
                .is_ok());
        }
        assert!(good.all_valid());

        let forged = DeferredSignatures::start().expect("started");
        let crypto = BatchCrypto::new(&rust, Some(&forged));
        // Answered at once, found out at the end.
        assert!(crypto
            .verify_signature(SignatureScheme::ED25519, b"hello", &key, &signature)
            .is_ok());
        assert!(crypto
            .verify_signature(SignatureScheme::ED25519, b"hellO", &key, &signature)
            .is_ok());
        assert!(!forged.all_valid());

        // A key of the wrong length, and the identity point as a key with a signature any
        // message satisfies without strict checking: refused like openmls refuses them.
        let short = DeferredSignatures::start().expect("started");
        BatchCrypto::new(&rust, Some(&short))
            .verify_signature(SignatureScheme::ED25519, b"hello", &key[..31], &signature)
            .expect("answered at once");
        assert!(!short.all_valid());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut weak = [0u8; 64];
        weak[0] = 1;
        assert!(rust
            .verify_signature(SignatureScheme::ED25519, b"hello", &identity, &weak)
            .is_err());
        let small = DeferredSignatures::start().expect("started");
        BatchCrypto::new(&rust, Some(&small))
            .verify_signature(SignatureScheme::ED25519, b"hello", &identity, &weak)
            .expect("answered at once");
        assert!(!small.all_valid());

        // Without deferral a forgery is refused in place.
        let strict = BatchCrypto::new(&rust, None);
        assert!(strict
            .verify_signature(SignatureScheme::ED25519, b"hellO", &key, &signature)
            .is_err());
    }
}
