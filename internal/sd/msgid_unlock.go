package sd

// Events of g8-unlock (G_PHASE=unlock).
var (
	UnlockKeyReceived = register("b4e398c0eff84500a7f7de682550bce7", "unlock.key-received",
		"The controller sent this node's unlock key",
		"The controller in @G_CONTROLLER@ approved the node (@G_NODE_ID@) and sent its unlock key over verified HTTPS. The key itself is never logged.")
	UnlockIdentityCreated = register("ec332814cf524351afa625994a5e7871", "unlock.identity-created",
		"This node made its identity key",
		"g8-unlock made the node's identity key @G_KEY@ (fingerprint @G_FINGERPRINT@), outside the encrypted config. The node proves this key on every unlock request; an operator approves the node only when `g8-ac node list` shows this same fingerprint. Deleting the key makes the node a stranger to its controller (`g8-ac node rekey` lets it enrol again).")
	UnlockPending = register("eab2df1eeca24a15a64516f89ece4ed0", "unlock.pending",
		"The node waits for approval at the controller",
		"The controller does not know this node yet (its primary MAC is @G_MAC@). Approve it on the controller with `g8-ac node approve`; the node asks again as the controller's Retry-After says.")
	UnlockDenied = register("916704f34b364bd4aad4740dab33e0ad", "unlock.denied",
		"The controller denied this node",
		"The controller answered 403 for this node (@G_MAC@). The node keeps asking slowly, so approving it later on the controller is enough; nothing is mounted meanwhile.")
	UnlockControllerError = register("4ffbbb9089f7422da08f3d6f57c3fd0a", "unlock.controller-error",
		"The unlock request failed; the node retries",
		"The controller could not be reached, rate-limited the node, or answered something unusable : @G_ERROR@. The node waits @G_WAIT@ and retries forever.")
	UnlockMounted = register("a5f923de6bab425ab22e7f6341282215", "unlock.mounted",
		"The encrypted config is mounted",
		"The private directory (@G_PRIVATE@) is mounted at @G_MOUNTPOINT@ by the FUSE backend in @G_BACKEND@, a child of g8-unlock (@G_FUSE_PID@), and its marker file read back.")
	UnlockEnrolled = register("f251202a173e4f819cba20b4891bce0d", "unlock.enrolled",
		"The node enrolled with the controller",
		"The node wrote its TLS identity (ssl/node.pem, node.key, ca.pem) and SSH host key into the unlocked config. The certificate expires at @G_CERT_EXPIRY@.")
	UnlockCertRenewed = register("cba9bd874d18479ba38d908751385cfa", "unlock.cert-renewed",
		"The node's TLS certificate was renewed",
		"The certificate neared its expiry; a new key and certificate signed by the controller replaced ssl/node.pem and ssl/node.key.")
	UnlockWrongKey = register("654b52dc578246808789bbae7f54351e", "unlock.wrong-key",
		"The key from the controller does not open the private directory",
		"The controller re-keyed the node, or the private directory belongs to another node. Nothing in the private directory was changed and g8-unlock exits with code 10, which its unit does not restart. Restore the right directory, or move it away so the next start enrolls afresh (its contents are then lost).")
	UnlockCorrupt = register("4cc998bda86d47199c138cb1b1283aa7", "unlock.corrupt",
		"The private directory is corrupt or of another backend",
		"The private directory (@G_PRIVATE@) is neither empty nor a volume of the configured backend. g8-unlock exits with code 11 and is not restarted; check --backend and the directory.")
	UnlockFUSEDied = register("4ca2ff45fd7744d8bef8107e210cc5dc", "unlock.fuse-died",
		"The FUSE process serving the config exited",
		"The encfs/gocryptfs child of g8-unlock exited while the config was mounted (@G_ERROR@). g8-unlock cleans the dead mount and exits with code 12; systemd restarts the unit.")
	UnlockStaleMount = register("356eb575b6284a34a7f8169088cb85a1", "unlock.stale-mount",
		"An old mount at the mountpoint was removed",
		"A dead FUSE mount (transport endpoint is not connected) or a mount left by an earlier run was unmounted before mounting again, so the config is never mounted twice.")
	UnlockUnmounted = register("d507e7122fba41f68afda671c1ef6f00", "unlock.unmounted",
		"The encrypted config was unmounted",
		"g8-unlock was stopped and unmounted @G_MOUNTPOINT@ cleanly.")
	UnlockUnauthenticated = register("f42e898d24664a2f97270eef8a74848e", "unlock.unauthenticated",
		"The encrypted config has no block MACs",
		"The EncFS volume in @G_PRIVATE@ was created before g8-unlock made volumes with a MAC on every block (the seed's standard mode), so someone with the disk could alter its ciphertext undetected. It is still mounted. Move the directory away and let the node enroll again to get an authenticated volume (docs/unlock.md).")
	UnlockRewrapped = register("26761a8fdfe142c1a40c08a5d0407047", "unlock.rewrapped",
		"The encrypted config moved to key recovery",
		"The node was enrolled before key recovery: its volume in @G_PRIVATE@ opened with an unlock key the controller stored. Its password was changed (without re-encrypting anything) to a disk key that only key recovery with the controller gives back, and the recovery metadata was written beside the directory (@G_RECOVERY@). The controller forgets its stored key on the node's next boot.")
	UnlockRecoveryRewrap = register("82cd8d4569244c0682d320e5afbd6fcc", "unlock.recovery-rewrap",
		"The node re-wrapped its disk key to the controller's current recovery key",
		"The controller rotated its recovery key (g8-ac recovery-key rotate). The node wrapped the same disk key to the new key and replaced its recovery metadata; the volume was not touched. The old key can be removed once no node recovers through it (g8-ac recovery-key list).")
	UnlockConfigSkipped = register("1a3194f2a2934eb28afea822115ffa6e", "unlock.config-skipped",
		"A controller-managed config file was not written",
		"The controller's unlock answer carried a managed file (@G_PATH@) the node cannot write: its path is one the node owns or is not a clean relative path, or something else is in its place (a directory, a full disk): @G_ERROR@. The node skipped that file and booted with the rest. Fix or remove it on the controller (`g8-ac config list`, `g8-ac config rm`); the node lists the files it skipped in unlock.json (skipped_files).")
	UnlockAdopted = register("235c7b4427324e74a831f0a4f407f0ff", "unlock.adopted",
		"g8-unlock adopted the mounted config",
		"A restart, upgrade or crash of g8-unlock left @G_MOUNTPOINT@ mounted and its FUSE process (pid @G_FUSE_PID@) serving it; the new g8-unlock took it over without asking the controller for the key or mounting again.")
	UnlockDetached = register("61f8f91d36b54a8c9bc95df74bcfd9e0", "unlock.detached",
		"g8-unlock exits leaving the config mounted",
		"SIGTERM during a restart (@G_JOB@): the FUSE process keeps serving @G_MOUNTPOINT@ and the next g8-unlock adopts it. A stop (systemctl stop g8-unlock) stops the units that use the config and unmounts it instead.")
)
