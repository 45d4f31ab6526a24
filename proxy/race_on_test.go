//go:build race

package proxy

// timingSlack widens timing checks under the race detector, which slows
// every goroutine several times over.
const timingSlack = 4
