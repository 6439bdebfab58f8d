package sshd

import (
	"slices"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

func TestCipherOrder(t *testing.T) {
	with, without := cipherOrder(true), cipherOrder(false)
	if with[0] != gossh.CipherAES128GCM || without[0] != gossh.CipherChaCha20Poly1305 {
		t.Errorf("first cipher: with AES %s, without %s", with[0], without[0])
	}
	// Both offer the same set, and nothing x/crypto calls insecure.
	a, b := slices.Clone(with), slices.Clone(without)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) || len(a) != 6 {
		t.Errorf("offered sets differ: %v / %v", with, without)
	}
	for _, c := range with {
		if c == gossh.InsecureCipherAES128CBC || c == gossh.InsecureCipherTripleDESCBC || c == gossh.InsecureCipherRC4 {
			t.Errorf("offers %s", c)
		}
	}
}
