package sshd

import (
	"golang.org/x/sys/cpu"

	gossh "golang.org/x/crypto/ssh"
)

// cipherOrder is the list of ciphers the server offers. RFC 4253 section
// 7.1 lets the client decide (the first cipher of the client's list that
// the server has), so what matters is the set, not the order; the order
// only speaks to clients that defer to the server.
//
// With AES and carry-less multiply instructions chacha20-poly1305 is left
// out: x/crypto has no amd64 assembly for ChaCha20, so it runs at a
// fraction of the speed of its assembly AES (GCM, CTR) and HMAC-SHA2, and
// the OpenSSH client, which lists chacha20-poly1305 first, would otherwise
// always get the slowest cipher; without it the client takes its next,
// aes128-ctr with hmac-sha2-256-etm (docs/sshd.md "Cipher set" has the
// figures). Every client that speaks chacha20-poly1305 also speaks AES.
// Without those instructions AES is the slow one and ChaCha20 comes first.
// CBC and the other ciphers x/crypto calls insecure are never offered.
func cipherOrder(hasAESGCM bool) []string {
	gcm := []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	ctr := []string{gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR}
	if hasAESGCM {
		return append(gcm, ctr...)
	}
	return append(append([]string{gossh.CipherChaCha20Poly1305}, gcm...), ctr...)
}

// hasAESGCM reports hardware AES-GCM (x/crypto's assembly path).
func hasAESGCM() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL) || cpu.S390X.HasAESGCM
}
