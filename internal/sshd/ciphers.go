package sshd

import (
	"golang.org/x/sys/cpu"

	gossh "golang.org/x/crypto/ssh"
)

// cipherOrder is the list of ciphers the server offers, best first for the
// machine. RFC 4253 section 7.1 lets the client decide (the first cipher
// of the client's list that the server has), so the order only matters to
// clients that defer to the server; the OpenSSH client does not, and
// picks chacha20-poly1305 unless told `-c aes128-gcm@openssh.com`. With
// AES and carry-less multiply instructions x/crypto's AES-GCM is assembly
// and several times faster than its ChaCha20 (pure Go on amd64), so GCM
// goes first there; without them ChaCha20 does. CBC and the other
// ciphers x/crypto calls insecure are never offered.
func cipherOrder(hasAESGCM bool) []string {
	gcm := []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	chacha := []string{gossh.CipherChaCha20Poly1305}
	ctr := []string{gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR}
	if hasAESGCM {
		return append(append(gcm, chacha...), ctr...)
	}
	return append(append(chacha, gcm...), ctr...)
}

// hasAESGCM reports hardware AES-GCM (x/crypto's assembly path).
func hasAESGCM() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL) || cpu.S390X.HasAESGCM
}
