package sd

// Events of g8-sshd.
var (
	SSHDLogin = register("916d5e441ce34a6ab0420223941ea03a", "sshd.login",
		"SSH login accepted",
		"User @G_USER@ logged in over SSH from @G_REMOTE@ with the public key @G_FINGERPRINT@ (line @G_KEY_LINE@ of authorized_keys).")
	SSHDLoginRejected = register("d14f95ca20b2415d8a0b046764847e56", "sshd.login-rejected",
		"SSH authentication attempt rejected",
		"The SSH client @G_REMOTE@ failed one authentication attempt as @G_USER@ with method @G_METHOD@ (only publickey is accepted), key @G_FINGERPRINT@: @G_REASON@. Reasons are: key not in authorized_keys, from= not matching, expired, or user not allowed. Clients with several keys offer them in turn, so one rejection before a login is normal; many from one address are not.")
	SSHDConnDropped = register("0a4d206337c44eed8b4987a92cf73b3d", "sshd.connection-dropped",
		"SSH connection closed by the server",
		"g8-sshd closed a connection: too many unauthenticated connections (--max-startups), the login grace time passed (--login-grace-time), the idle timeout (--idle-timeout), keepalives went unanswered, or the client sent something that is not SSH. The client was @G_REMOTE@.")
	SSHDKeysLoaded = register("8e6c2e0a729947fcbae7ba117d03f414", "sshd.authorized-keys-loaded",
		"SSH authorized_keys (re)loaded",
		"g8-sshd read authorized_keys (@G_FILE@) at start, on SIGHUP or after the file changed: @G_KEYS@ usable lines, @G_SKIPPED@ malformed ones (each has its own warning). Sessions already open are not affected. If the file is unreadable the keys loaded before stay in force. A warning with a mode (@G_MODE@) means the file is writable by group or others.")
	SSHDKeyLineSkipped = register("fc5c47bd9bc540b7a5641b6e121535da", "sshd.authorized-keys-line-skipped",
		"A line of authorized_keys was skipped",
		"Line @G_LINE@ of @G_FILE@ is not a valid OpenSSH authorized_keys entry: @G_ERROR@. The other lines still work. Fix the line; the file is re-read automatically.")
	SSHDHostKeyLoaded = register("5b7b9e5db5694d7fb9a99b668747f472", "sshd.host-key-loaded",
		"SSH host key loaded",
		"g8-sshd serves with the host key in @G_FILE@; clients see the fingerprint @G_FINGERPRINT@ on first contact.")
	SSHDHostKeySkipped = register("71e2c47f448a45db94bfc39de0b99c36", "sshd.host-key-skipped",
		"An SSH host key could not be used",
		"A ssh_host_*_key file in the ssh dir could not be read or parsed (@G_ERROR@), the ed25519 key enrollment creates is missing, or a key file is readable by group or others (@G_MODE@; a warning only). g8-sshd serves with the remaining keys; with none it refuses to start (exit 10) and never generates one.")
	SSHDSessionStarted = register("fcf700b93f744ff58b710caad50107ad", "sshd.session-started",
		"SSH session started",
		"@G_USER@ from @G_REMOTE@ started a session of kind @G_KIND@ (shell, exec or a subsystem such as sftp); terminal: @G_PTY@; command forced by authorized_keys: @G_FORCED@.")
	SSHDSessionEnded = register("11448d5deb1b4ff4b146eda0d5de10b5", "sshd.session-ended",
		"SSH session ended",
		"A session ended with @G_EXIT_STATUS@ (or @G_SIGNAL@ when its process was killed by one) after @G_DURATION@.")
	SSHDForward = register("164923d82a1b4276ad9b2b3d9ed516a1", "sshd.forwarding",
		"SSH forwarding request",
		"A client asked for TCP port or agent forwarding. It is refused unless enabled with --allow-tcp-forwarding / --allow-agent-forwarding and not forbidden by the key's options (restrict, no-port-forwarding, permitopen=, permitlisten=, no-agent-forwarding).")
)
