package command

// Commands newer than the redis-server the table was generated from, which
// funnel must know to route them right: CLIENT SETINFO and NO-TOUCH are
// answered by funnel (clients send SETINFO on every connection), and WAITAOF
// blocks, so it must never ride a shared connection. Their entries follow
// Redis 7.2's COMMAND INFO.
func init() {
	table["waitaof"] = &Info{Name: "waitaof", Arity: 4, Flags: NoScript}
	client := table["client"].Subcommands
	client["setinfo"] = &Info{Name: "client|setinfo", Arity: 4, Flags: NoScript | Loading | Stale}
	client["no-touch"] = &Info{Name: "client|no-touch", Arity: 3, Flags: NoScript | Loading | Stale}
	number()
}
