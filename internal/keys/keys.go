// Package keys defines keyward's key material: how a key is generated, how
// its token is written and parsed, and how its secret is hashed.
//
// A token is kw_<keyId>_<secret><checksum>:
//   - keyId: 16 base62 characters (95 bits), public, used for lookup;
//   - secret: 43 base62 characters drawn uniformly from crypto/rand
//     (43·log2(62) ≈ 256.03 bits);
//   - checksum: CRC-32 (IEEE) of everything before it, as 6 base62
//     characters, so a typo or junk is refused before any lookup.
//
// The fixed "kw_" prefix lets secret scanners find leaked tokens.
package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"unsafe"
)

const (
	// Prefix starts every token.
	Prefix = "kw_"
	// KeyIDLen is the length of a key ID.
	KeyIDLen = 16
	// SecretLen is the length of a secret.
	SecretLen = 43
	// checksumLen is the length of the encoded CRC-32.
	checksumLen = 6
	// TokenLen is the length of a token.
	TokenLen = len(Prefix) + KeyIDLen + 1 + SecretLen + checksumLen
	// DigestPrefix names the hash algorithm of a stored digest, so the
	// algorithm can change later without ambiguity.
	DigestPrefix = "sha256:"
)

const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Errors of Parse. They never carry the token.
var (
	ErrMalformed = errors.New("not a keyward token")
	ErrChecksum  = errors.New("token checksum does not match")
)

// Key is a freshly issued key. It holds the secret: keep it out of logs.
type Key struct {
	ID     string
	Secret string
}

// Generate draws a new key from crypto/rand.
func Generate() (Key, error) {
	return generate(rand.Reader)
}

func generate(r io.Reader) (Key, error) {
	id, err := randomBase62(r, KeyIDLen)
	if err != nil {
		return Key{}, err
	}
	secret, err := randomBase62(r, SecretLen)
	if err != nil {
		return Key{}, err
	}
	return Key{ID: id, Secret: secret}, nil
}

// randomBase62 draws n characters uniformly from the base62 alphabet by
// rejection sampling (bytes ≥ 248 are dropped so every character is equally
// likely).
func randomBase62(r io.Reader, n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/4+8)
	for len(out) < n {
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", errors.New("read random bytes: " + err.Error())
		}
		for _, b := range buf {
			if b >= 248 {
				continue
			}
			out = append(out, alphabet[b%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

// Token is the single string that carries the key: give it to clients.
func (k Key) Token() string {
	body := Prefix + k.ID + "_" + k.Secret
	return body + checksum(body)
}

// Digest is the stored form of the key's secret.
func (k Key) Digest() string { return Digest(k.Secret) }

// String hides the secret from fmt and loggers.
func (k Key) String() string { return "key " + k.ID }

// GoString hides the secret from %#v.
func (k Key) GoString() string { return k.String() }

func checksum(body string) string {
	c := checksumOf(body)
	return string(c[:])
}

// checksumOf encodes the CRC-32 of body without allocating.
func checksumOf(body string) [checksumLen]byte {
	sum := crc32.ChecksumIEEE(bytesOf(body))
	var out [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = alphabet[sum%62]
		sum /= 62
	}
	return out
}

// bytesOf views a string as bytes without copying, for hash functions that
// only read their input.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// Parse splits a token into its key ID and secret, refusing anything that is
// not exactly a well-formed token with a valid checksum.
func Parse(token string) (id, secret string, err error) {
	if len(token) != TokenLen || token[:len(Prefix)] != Prefix {
		return "", "", ErrMalformed
	}
	idEnd := len(Prefix) + KeyIDLen
	if token[idEnd] != '_' {
		return "", "", ErrMalformed
	}
	id = token[len(Prefix):idEnd]
	secret = token[idEnd+1 : idEnd+1+SecretLen]
	sum := token[idEnd+1+SecretLen:]
	if !IsBase62(id) || !IsBase62(secret) || !IsBase62(sum) {
		return "", "", ErrMalformed
	}
	if c := checksumOf(token[:idEnd+1+SecretLen]); string(c[:]) != sum {
		return "", "", ErrChecksum
	}
	return id, secret, nil
}

// ValidID reports whether s has the form of a key ID.
func ValidID(s string) bool { return len(s) == KeyIDLen && IsBase62(s) }

// ValidSecret reports whether s has the form of a secret.
func ValidSecret(s string) bool { return len(s) == SecretLen && IsBase62(s) }

// IsBase62 reports whether s only holds base62 characters.
func IsBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isBase62[s[i]] {
			return false
		}
	}
	return true
}

// isBase62 is a table: one load per character, no branch to mispredict, on
// every token a check parses.
var isBase62 = func() (t [256]bool) {
	for _, c := range alphabet {
		t[c] = true
	}
	return t
}()

// Digest hashes a secret for storage: SHA-256, no pepper, no slow KDF. The
// secret has 256 random bits, so no guess can be confirmed offline; a slow
// hash would only make every gateway request slower (docs/key-material.md).
func Digest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return DigestPrefix + hex.EncodeToString(sum[:])
}

// Sum is a parsed digest, ready for constant-time comparison.
type Sum [sha256.Size]byte

// ParseDigest decodes a stored digest.
func ParseDigest(d string) (Sum, error) {
	var s Sum
	if len(d) != len(DigestPrefix)+2*sha256.Size || d[:len(DigestPrefix)] != DigestPrefix {
		return s, errors.New("digest is not sha256:<64 hex digits>")
	}
	if _, err := hex.Decode(s[:], []byte(d[len(DigestPrefix):])); err != nil {
		return s, errors.New("digest is not sha256:<64 hex digits>")
	}
	return s, nil
}

// Matches reports, in constant time, whether secret hashes to s.
func (s Sum) Matches(secret string) bool {
	got := sha256.Sum256(bytesOf(secret))
	return subtle.ConstantTimeCompare(got[:], s[:]) == 1
}
