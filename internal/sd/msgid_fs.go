package sd

// g8-fs events (internal/sandbox). G_SANDBOX names the sandbox, G_HASH a
// chunk or flist, G_STORE the store.
var (
	FSSandboxMounted = register("13c5e00269254426866912ee298c51ae", "fs.sandbox-mounted",
		"A g8-fs sandbox was mounted",
		"The sandbox @G_SANDBOX@ (flist @G_FLIST_HASH@) is mounted read-only at @G_MOUNTPOINT@; file contents are fetched on first read.")
	FSSandboxUnmounted = register("e0bc3e623d744904bfe5ba5387a48e4d", "fs.sandbox-unmounted",
		"A g8-fs sandbox was unmounted",
		"The sandbox @G_SANDBOX@ was unmounted because it left fs.toml (reload) or g8-fs is stopping.")
	FSSandboxFailed = register("bafc3abb7b24451fba8186fc93c4e2a6", "fs.sandbox-failed",
		"A g8-fs sandbox could not be mounted",
		"The sandbox @G_SANDBOX@ failed: @G_ERROR@ (flist not found, flist hash mismatch, invalid flist, mountpoint busy). Fix fs.toml or the store and run `systemctl reload g8-fs`; the other sandboxes are not affected. Errors reaching the store are retried on their own.")
	FSChunkCorrupt = register("14f7d5568c134034b2fd4274ce613864", "fs.chunk-corrupt",
		"A chunk from the store failed verification",
		"The blob the store returned for @G_HASH@ does not hash to its name (or does not decompress to the size the flist records). The read got EIO and nothing was cached. The store (@G_STORE@) holds corrupt data: re-upload the chunk with `g8-fs build`.")
	FSStoreUnreachable = register("625e1fc0bd1e480ca6d652a4e55654b3", "fs.store-unreachable",
		"The g8-fs content store is unreachable",
		"Fetching from @G_STORE@ failed (@G_ERROR@). Cached files keep working; reads of uncached content fail with EIO after the fetch timeout. g8-fs keeps trying and logs fs.store-recovered when the store answers again.")
	FSStoreRecovered = register("a5f902d9bb3044b5aaeac4f93a6598af", "fs.store-recovered",
		"The g8-fs content store answers again",
		"A fetch from @G_STORE@ succeeded after failures; uncached content is readable again.")
	FSStaleMount = register("ed0f46c689154735afdbfc29a3c20f57", "fs.stale-mount-cleaned",
		"A stale FUSE mount was removed before mounting",
		"@G_MOUNTPOINT@ was still mounted by a previous g8-fs that is gone (\"transport endpoint is not connected\"); it was lazily unmounted so the sandbox could be mounted again.")
	FSReloaded = register("e12b91722dd44e529c23b3172a65c931", "fs.reloaded",
		"g8-fs re-read its configuration",
		"After SIGHUP (systemctl reload g8-fs) the sandboxes in @G_ADDED@ were mounted and those in @G_REMOVED@ unmounted; the others were not touched.")
	FSPassthroughUnavailable = register("b733f64dc16e4f78bfff3b7b948a2407", "fs.passthrough-unavailable",
		"FUSE passthrough is not available to a g8-fs sandbox",
		"The kernel refused a passthrough backing file for @G_SANDBOX@ (@G_ERROR@): the kernel lacks FUSE passthrough (6.9+, CONFIG_FUSE_PASSTHROUGH), g8-fs lacks CAP_SYS_ADMIN, or the cache directory is on a stacked file system. Files are served as before, through g8-fs, at lower speed for cached files; nothing else changes.")
	FSConfigRejected = register("8d2a375bd4bb4ec095c2058d50c9f42d", "fs.config-rejected",
		"g8-fs refused a new configuration",
		"On reload the configuration @G_FILE@ was invalid (@G_ERROR@); nothing changed and the previous sandboxes stay mounted.")
	FSTakenOver = register("6cf021d80a1a4486974f870479d39940", "fs.taken-over",
		"g8-fs took over a sandbox's live FUSE connection",
		"After a restart, upgrade or crash of g8-fs, the sandbox @G_SANDBOX@ at @G_MOUNTPOINT@ was never unmounted: the new g8-fs took its /dev/fuse connection from systemd's fd store and serves it with the same flist (@G_FLIST_HASH@) and node ids; requests the old process left unanswered were resent by the kernel. Programs using the sandbox saw a pause, not an error.")
	FSConnDropped = register("ab0af511ea214da9bdf137c921e0eaf2", "fs.connection-dropped",
		"g8-fs could not take over a FUSE connection",
		"A connection left in systemd's fd store (@G_FD_NAME@) could not be served again (@G_ERROR@: no record in fs.json, the flist file changed or is gone, the mount was removed). It was closed and its mountpoint lazily unmounted; programs using it got errors, and the sandbox is mounted afresh if fs.toml still lists it.")
	FSDetached = register("6b82d7112d8042ceb08768cde8a6a234", "fs.detached",
		"g8-fs exits leaving its sandboxes mounted",
		"SIGTERM during a restart (@G_JOB@): the FUSE connections stay in systemd's fd store and the next g8-fs serves them; nothing was unmounted. A stop (systemctl stop) unmounts instead.")
)
