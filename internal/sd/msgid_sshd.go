package sd

// Events of g8-sshd.
var (
	SSHDLogin = register("916d5e441ce34a6ab0420223941ea03a", "sshd.login",
		"SSH login accepted",
		"A client logged in over SSH. G8_USER is the account, G8_FINGERPRINT the SHA256 fingerprint of the public key, G8_KEY_LINE its line in authorized_keys and G8_REMOTE the client's address and port.")
	SSHDLoginRejected = register("d14f95ca20b2415d8a0b046764847e56", "sshd.login-rejected",
		"SSH authentication attempt rejected",
		"An SSH client failed one authentication attempt. G8_METHOD is the method tried (only publickey is accepted), G8_FINGERPRINT the offered key, G8_REMOTE the client and G8_REASON why: key not in authorized_keys, from= not matching, expired, or user not allowed. Clients with several keys offer them in turn, so one rejection before a login is normal; many from one address are not.")
	SSHDConnDropped = register("0a4d206337c44eed8b4987a92cf73b3d", "sshd.connection-dropped",
		"SSH connection closed by the server",
		"g8-sshd closed a connection: too many unauthenticated connections (--max-startups), the login grace time passed (--login-grace-time), the idle timeout (--idle-timeout), keepalives went unanswered, or the client sent something that is not SSH. G8_REMOTE is the client.")
	SSHDKeysLoaded = register("8e6c2e0a729947fcbae7ba117d03f414", "sshd.authorized-keys-loaded",
		"SSH authorized_keys (re)loaded",
		"g8-sshd read authorized_keys (G8_FILE) at start, on SIGHUP or after the file changed; G8_KEYS lines are usable, G8_SKIPPED were malformed (each has its own warning). Sessions already open are not affected. If the file is unreadable the keys loaded before stay in force. A warning with G8_MODE means the file is writable by group or others.")
	SSHDKeyLineSkipped = register("fc5c47bd9bc540b7a5641b6e121535da", "sshd.authorized-keys-line-skipped",
		"A line of authorized_keys was skipped",
		"Line G8_LINE of G8_FILE is not a valid OpenSSH authorized_keys entry (G8_ERROR says why: bad key, unknown or malformed option). The other lines still work. Fix the line; the file is re-read automatically.")
	SSHDHostKeyLoaded = register("5b7b9e5db5694d7fb9a99b668747f472", "sshd.host-key-loaded",
		"SSH host key loaded",
		"g8-sshd serves with the host key in G8_FILE; G8_FINGERPRINT is what clients see on first contact.")
	SSHDHostKeySkipped = register("71e2c47f448a45db94bfc39de0b99c36", "sshd.host-key-skipped",
		"An SSH host key could not be used",
		"A ssh_host_*_key file in the ssh dir could not be read or parsed (G8_ERROR), the ed25519 key enrollment creates is missing, or a key file is readable by group or others (G8_MODE; a warning only). g8-sshd serves with the remaining keys; with none it refuses to start (exit 10) and never generates one.")
	SSHDSessionStarted = register("fcf700b93f744ff58b710caad50107ad", "sshd.session-started",
		"SSH session started",
		"An authenticated client started a session: G8_KIND is shell, exec or the subsystem (sftp); G8_PTY tells whether it has a terminal; G8_FORCED whether authorized_keys forced the command.")
	SSHDSessionEnded = register("11448d5deb1b4ff4b146eda0d5de10b5", "sshd.session-ended",
		"SSH session ended",
		"A session ended with G8_EXIT_STATUS (or G8_SIGNAL when its process was killed by one) after G8_DURATION.")
	SSHDForward = register("164923d82a1b4276ad9b2b3d9ed516a1", "sshd.forwarding",
		"SSH forwarding request",
		"A client asked for TCP port or agent forwarding. It is refused unless enabled with --allow-tcp-forwarding / --allow-agent-forwarding and not forbidden by the key's options (restrict, no-port-forwarding, permitopen=, permitlisten=, no-agent-forwarding).")
)
