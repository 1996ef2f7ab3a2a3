package keys

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestGeneratedTokenRoundTrips(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !ValidID(k.ID) || !ValidSecret(k.Secret) {
			t.Fatalf("generated key has a bad shape: id %q", k.ID)
		}
		tok := k.Token()
		if len(tok) != TokenLen || !strings.HasPrefix(tok, Prefix) {
			t.Fatalf("token has length %d, want %d with prefix %q", len(tok), TokenLen, Prefix)
		}
		id, secret, err := Parse(tok)
		if err != nil || id != k.ID || secret != k.Secret {
			t.Fatalf("Parse(token) = %q, _, %v; want the generated key", id, err)
		}
		if seen[k.ID] || seen[k.Secret] {
			t.Fatal("crypto/rand repeated itself")
		}
		seen[k.ID], seen[k.Secret] = true, true
	}
}

func TestParseRefusesEverySingleCharacterTypo(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	tok := []byte(k.Token())
	for i := range tok {
		for _, c := range []byte("0aZ_-") {
			if tok[i] == c {
				continue
			}
			typo := bytes.Clone(tok)
			typo[i] = c
			if _, _, err := Parse(string(typo)); err == nil {
				t.Fatalf("typo at %d (%q) accepted", i, c)
			}
		}
	}
}

func TestParseRefusesJunk(t *testing.T) {
	k, _ := Generate()
	tok := k.Token()
	for name, in := range map[string]string{
		"empty":          "",
		"prefix only":    Prefix,
		"short":          tok[:len(tok)-1],
		"long":           tok + "0",
		"other prefix":   "gh" + tok[2:],
		"no separator":   tok[:len(Prefix)+KeyIDLen] + "-" + tok[len(Prefix)+KeyIDLen+1:],
		"non-ascii":      strings.Repeat("é", TokenLen/2) + "x",
		"bearer literal": "Bearer " + tok[:TokenLen-7],
	} {
		if _, _, err := Parse(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestChecksumErrorIsDistinct(t *testing.T) {
	k, _ := Generate()
	tok := k.Token()
	bad := tok[:len(tok)-1] + string(alphabet[(strings.IndexByte(alphabet, tok[len(tok)-1])+1)%62])
	if _, _, err := Parse(bad); !errors.Is(err, ErrChecksum) {
		t.Fatalf("Parse(bad checksum) = %v, want ErrChecksum", err)
	}
}

func TestDigestMatchesOnlyItsSecret(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	sum, err := ParseDigest(a.Digest())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Digest(), "sha256:") {
		t.Fatalf("digest %q does not name its algorithm", a.Digest())
	}
	if !sum.Matches(a.Secret) || sum.Matches(b.Secret) {
		t.Fatal("digest does not separate secrets")
	}
	for _, bad := range []string{"", "sha256:", "md5:" + strings.Repeat("0", 64), "sha256:" + strings.Repeat("g", 64)} {
		if _, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q) accepted", bad)
		}
	}
}

func TestKeyFormattingHidesTheSecret(t *testing.T) {
	k, _ := Generate()
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
		if strings.Contains(s, k.Secret) {
			t.Fatalf("formatted key shows its secret: %s", s)
		}
	}
}

func TestRandomBase62IsUniformEnough(t *testing.T) {
	// 62 characters, 590,000 draws: each should appear about 9,516 times;
	// a modulo bias (no rejection of bytes ≥ 248) would show as ±4%.
	counts := map[byte]int{}
	for range 10000 {
		k, _ := Generate()
		for _, c := range []byte(k.Secret + k.ID) {
			counts[c]++
		}
	}
	for _, c := range []byte(alphabet) {
		if n := counts[c]; n < 8000 || n > 10400 {
			t.Errorf("character %q drawn %d times out of 590000, want about 9516", c, n)
		}
	}
}

func FuzzParse(f *testing.F) {
	k, _ := generate(bytes.NewReader(bytes.Repeat([]byte("0123456789"), 20)))
	f.Add(k.Token())
	f.Add("")
	f.Add(Prefix)
	f.Add("kw_" + strings.Repeat("A", KeyIDLen) + "_" + strings.Repeat("b", SecretLen+checksumLen))
	f.Fuzz(func(t *testing.T, in string) {
		id, secret, err := Parse(in)
		if err != nil {
			if id != "" || secret != "" {
				t.Fatal("refused token still returned parts")
			}
			return
		}
		// Whatever parses must be exactly the token of its parts.
		if (Key{ID: id, Secret: secret}).Token() != in {
			t.Fatalf("Parse accepted %q, which is not the token of its parts", in)
		}
	})
}
