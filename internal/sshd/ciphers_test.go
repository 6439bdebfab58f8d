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
	// With AES instructions the same set less chacha20-poly1305, so that
	// clients listing it first take an AES cipher; without, all of them.
	if slices.Contains(with, gossh.CipherChaCha20Poly1305) {
		t.Errorf("with AES instructions chacha20-poly1305 is offered: %v", with)
	}
	want := slices.Concat([]string{gossh.CipherChaCha20Poly1305}, with)
	a, b := slices.Clone(want), slices.Clone(without)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) || len(a) != 6 {
		t.Errorf("offered sets: %v with AES, %v without", with, without)
	}
	for _, c := range without {
		if c == gossh.InsecureCipherAES128CBC || c == gossh.InsecureCipherTripleDESCBC || c == gossh.InsecureCipherRC4 {
			t.Errorf("offers %s", c)
		}
	}
}
