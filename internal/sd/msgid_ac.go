package sd

// Events of the reference controller g8-ac (G_PHASE=ac).
var (
	ACServing = register("9865e3dbff084278bad0c784c0214e5b", "ac.serving",
		"The g8 controller is serving",
		"g8-ac listens on the address in @G_ADDR@ (one message per --listen). Nodes reach it over HTTPS verified against the trust anchor printed by `g8-ac ca`.")
	ACNodePending = register("bbeb7a3f00c14e6fb6c2106540bd9e08", "ac.node-pending",
		"An unknown node asks to be unlocked",
		"A node with MACs @G_MACS@ asked for its unlock key for the first time and is recorded as pending (@G_NODE@). It keeps asking until an operator runs `g8-ac node approve @G_NODE@` (or `node deny`).")
	ACUnlockGranted = register("be30b24961e04e24a41903a754b8de40", "ac.unlock-granted",
		"A node received its unlock key",
		"The approved node @G_NODE@, asking from @G_PEER@, received its unlock key (and a client certificate when @G_CERT@ is true).")
	ACNodeRefused = register("e8c7de0b5ff345d487d10187c20162f9", "ac.node-refused",
		"A node was refused",
		"A request from @G_PEER@ was refused: the node @G_NODE@ is denied or revoked (@G_STATE@), or its MACs belong to two different nodes. `g8-ac node list` shows every node's state; `g8-ac node approve` lets it in again.")
	ACRequestFailed = register("1b1a06c2b4c0498e8766c087a0da3603", "ac.request-failed",
		"A controller request failed internally",
		"Answering @G_PATH@ for @G_PEER@ failed with @G_ERROR@ (the client got a 500). Usually the store: check disk space and the permissions of the data directory.")
	ACJobStarted = register("9bfc37ef996e4353a3ee1cbd9034e265", "ac.job-started",
		"A job was handed to a node",
		"The node @G_NODE@ took job @G_JOB@ (kind @G_KIND@) from the queue; `g8-ac job show @G_JOB@` follows it.")
	ACJobFinished = register("415b61de4ecb423a80cc1f10ad202e90", "ac.job-finished",
		"A node finished a job",
		"The node @G_NODE@ reported job @G_JOB@ as @G_STATE@; `g8-ac job show @G_JOB@` prints the result.")
	ACJobExpired = register("7b0dfb3b3193425bac854f7edbccc3ef", "ac.job-expired",
		"A job timed out without a result",
		"The node took job @G_JOB@ but sent no result within the job's timeout plus a grace period, so the controller marked it timeout. A late result still replaces it.")
	ACSSHHostCert = register("6a9cf740011d4130bdda52426faa894d", "ac.ssh-host-cert",
		"A node's SSH host key was signed",
		"The controller's SSH host CA signed the host key @G_FINGERPRINT@ of node @G_NODE@ for the principals @G_PRINCIPALS@ (serial @G_SERIAL@, valid until @G_VALID_BEFORE@). Operators trust it with the line `g8-ac ssh-ca` prints.")
	ACIdentityRefused = register("8dc132f3afab4972bb5474566919a389", "ac.identity-refused",
		"An unlock request without the node's identity proof was refused",
		"A request from @G_PEER@ named node @G_NODE@ (by its MACs @G_MACS@) without proving that node's identity key: it presented the key @G_FINGERPRINT@ (empty: none). It got nothing: no unlock key, certificate, config or job. Either someone on the network is impersonating the node (its MACs are visible to anyone on the LAN), or the machine was replaced and enrols with a new key: then compare @G_FINGERPRINT@ with the node's console and run `g8-ac node rekey @G_NODE@`.")
	ACIdentityBound = register("dee7fea012a4401a8a87157c5f4e7398", "ac.identity-bound",
		"A node's identity key was recorded",
		"The node @G_NODE@, asking from @G_PEER@, presented the identity key @G_FINGERPRINT@ for the first time (a new node, a node approved by MAC before its first boot, or a rekeyed one). From now on only a request that proves this key unlocks the node. Compare @G_FINGERPRINT@ with the node's console before approving.")
	ACCertRefused = register("136bc6580f6f44fd86a27831f77d0d9b", "ac.cert-refused",
		"A node certificate was refused",
		"A request from @G_PEER@ presented a client certificate that does not verify against the node CA, has expired, or is not the current certificate of node @G_NODE@ (serial @G_SERIAL@: superseded by a renewal, or issued before a rekey). It got a 401 or 403. A node whose session keeps being refused renews its certificate through g8-unlock at its next start.")
	ACCertIssued = register("a2ebd6e6fec64036a125f232cd99993d", "ac.cert-issued",
		"A node certificate was issued",
		"The node @G_NODE@ received a client certificate (serial @G_SERIAL@, valid until @G_EXPIRY@), at an unlock or by its session's renewal. It becomes the node's only accepted certificate at its first use.")
	ACMACReported = register("ffa5b8a638fb48f59db99f80863c38ef", "ac.mac-reported",
		"A node reported MACs that are not bound to it",
		"The node @G_NODE@ proved its identity and reported MACs @G_MACS@ that are not bound to it (a new NIC, or a MAC the node borrows). They are recorded for `g8-ac node show`; only `g8-ac node approve-mac @G_NODE@ MAC` binds one. @G_DROPPED@ were not recorded: the node already has the most unbound MACs it may report.")
	ACGridLeading = register("38334f3a996740ce86368684ac01c9f6", "ac.grid-leading",
		"This controller runs the grid reconcile",
		"Of the controllers sharing the store, this one holds the grid lock (PostgreSQL: an advisory lock; SQLite: a file lock beside the database) and reconciles the repository @G_REPO@. The others wait; when this one stops or dies, another takes over within --grid-retry.")
	ACGridNotLeading = register("a2841227c41a43fd914a7c0334b18258", "ac.grid-not-leading",
		"This controller stopped running the grid reconcile",
		"The grid lock was given up (shutdown) or may be lost (the database connection holding it failed: @G_ERROR@); another controller takes the reconcile over. This one tries again every --grid-retry.")
	ACStopped = register("08df3a23f846496ebba0d5c1abbf11c1", "ac.stopped",
		"The g8 controller stopped",
		"g8-ac serve shut down after SIGTERM or SIGINT, after letting requests in flight finish.")
	ACKeyDropped = register("36657a9351bc47d1a36e7d5b68511a53", "ac.key-dropped",
		"The controller forgot a node's stored unlock key",
		"The node (@G_NODE@) was enrolled before key recovery and has re-wrapped its volume to a key that only key recovery gives back; it said so with a recovery exchange. The unlock key the controller stored for it was deleted: the controller's database no longer holds anything that opens the node's disk.")
	ACUnlockThrottled = register("836270af8ac14b3f9414c171fda6f9d4", "ac.unlock-throttled",
		"Unlock requests were refused: too many from a source, too many new nodes, or too many pending",
		"Requests to /v1/unlock were answered 429 with a Retry-After because of @G_REASON@: `source` — @G_PEER@ (an IPv4 address, or an IPv6 /64) asked more often than --unlock-rate/--unlock-burst allow; `new-nodes` — more unknown nodes asked than --new-node-rate/--new-node-burst admit; `pending-full` — --max-pending nodes already wait for approval. @G_REFUSED@ requests were refused since the last such line (one line per reason every 10 s at most). Known nodes keep unlocking and heartbeats are not affected. Approve or deny the pending nodes (`g8-ac node list`); unapproved ones expire after --pending-expiry.")
	ACNodeThrottled = register("bf4436c04f074c1383904af05e768efe", "ac.node-throttled",
		"A node's requests were refused: over its request budget",
		"The node @G_NODE@ (from @G_PEER@) sent more requests, or more events, than --node-rate/--node-burst allow, and was answered 429 with a Retry-After of @G_RETRY_AFTER@, which its session honours. @G_REFUSED@ of its requests were refused since the last such line (one line per node every 10 s at most). A node doing this persistently is misbehaving or compromised: `g8-ac events @G_NODE@`, `g8-ac node revoke @G_NODE@`.")
	ACPendingExpired = register("a26a9ff6991343a99b8d14876f63a3d2", "ac.pending-expired",
		"Pending nodes never approved were deleted",
		"@G_COUNT@ nodes that asked to be unlocked, were never approved and are older than --pending-expiry (@G_EXPIRY@) were deleted with their MACs: what a flood of made-up identities leaves behind. A real node still asking is made pending again at its next request.")
)
