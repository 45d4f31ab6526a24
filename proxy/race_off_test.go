//go:build !race

package proxy

// timingSlack widens timing checks under the race detector; without it,
// checks hold to the stated bound.
const timingSlack = 1
