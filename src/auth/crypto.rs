//! jsonwebtoken's signature checks done with ring, the crypto library rustls, sqlx and redis-rs
//! already use here, instead of a second one (its own providers are aws-lc, a C build, or
//! RustCrypto's `rsa`, which carries an open advisory). Verification only: this service never
//! signs a token. Installed once per process, before the first token is checked.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as sig;

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        compute_digest: digest,
    },
};

/// Makes ring the provider jsonwebtoken uses in this process (a second call changes nothing).
pub fn install() {
    // Err: installed already, by an earlier call.
    let _ = PROVIDER.install_default();
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// The verifier of `algorithm` for `key`; what the settings allow (`AUTH_JWT_ALGORITHMS`) is
/// checked before this, by the validation.
fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let (rsa, ecdsa): (
        Option<&'static sig::RsaParameters>,
        Option<&'static sig::EcdsaVerificationAlgorithm>,
    ) = match algorithm {
        Algorithm::RS256 => (Some(&sig::RSA_PKCS1_2048_8192_SHA256), None),
        Algorithm::RS384 => (Some(&sig::RSA_PKCS1_2048_8192_SHA384), None),
        Algorithm::RS512 => (Some(&sig::RSA_PKCS1_2048_8192_SHA512), None),
        Algorithm::PS256 => (Some(&sig::RSA_PSS_2048_8192_SHA256), None),
        Algorithm::PS384 => (Some(&sig::RSA_PSS_2048_8192_SHA384), None),
        Algorithm::PS512 => (Some(&sig::RSA_PSS_2048_8192_SHA512), None),
        Algorithm::ES256 => (None, Some(&sig::ECDSA_P256_SHA256_FIXED)),
        Algorithm::ES384 => (None, Some(&sig::ECDSA_P384_SHA384_FIXED)),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    let family = if rsa.is_some() {
        AlgorithmFamily::Rsa
    } else {
        AlgorithmFamily::Ec
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let check = match (rsa, ecdsa, key.kind()) {
        // ring refuses a modulus with a leading zero byte, which some providers publish.
        (Some(params), _, DecodingKeyKind::RsaModulusExponent { n, e }) => Check::RsaComponents {
            params,
            n: without_leading_zeros(n),
            e: without_leading_zeros(e),
        },
        (Some(params), _, DecodingKeyKind::SecretOrDer(der)) => Check::Der {
            algorithm: params,
            der: der.clone(),
        },
        (None, Some(algorithm), DecodingKeyKind::SecretOrDer(point)) => Check::Der {
            algorithm,
            der: point.clone(),
        },
        _ => return Err(ErrorKind::InvalidKeyFormat.into()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        check,
    }))
}

fn without_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

enum Check {
    /// An RSA key from a JWK's `n` and `e`.
    RsaComponents {
        params: &'static sig::RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// A public key in the form ring reads for `algorithm` (an EC point, `04 || x || y`).
    Der {
        algorithm: &'static dyn sig::VerificationAlgorithm,
        der: Vec<u8>,
    },
}

struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), SignatureError> {
        let checked = match &self.check {
            Check::RsaComponents { params, n, e } => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            Check::Der { algorithm, der } => {
                sig::UnparsedPublicKey::new(*algorithm, der).verify(message, signature)
            }
        };
        checked.map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn leading_zero_bytes_are_taken_off_a_modulus() {
        assert_eq!(without_leading_zeros(&[0, 0, 1, 0]), [1, 0]);
        assert_eq!(without_leading_zeros(&[1, 2]), [1, 2]);
        assert!(without_leading_zeros(&[0, 0]).is_empty());
    }

    #[test]
    fn an_es256_signature_is_checked_and_a_changed_message_is_not_accepted() {
        install();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let key = DecodingKey::from_ec_components(&b64(&point[1..33]), &b64(&point[33..])).unwrap();
        let message = b"header.claims";
        let signature = pair.sign(&rng, message).unwrap();
        let verifier = verifier(&Algorithm::ES256, &key).unwrap();
        assert!(
            verifier
                .verify(message, &signature.as_ref().to_vec())
                .is_ok()
        );
        assert!(
            verifier
                .verify(b"header.claimz", &signature.as_ref().to_vec())
                .is_err()
        );
        // An EC key is not an RSA key, whatever the token's header says.
        assert!(super::verifier(&Algorithm::RS256, &key).is_err());
        assert!(super::verifier(&Algorithm::HS256, &key).is_err());
    }
}
