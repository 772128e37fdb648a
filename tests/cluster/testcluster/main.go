// Command testcluster runs plugsync's test control plane: a real etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler built from the published Go modules, kwok for
// fake nodes, Debian's docker-registry, and a Kaniko stand-in that really pushes images.
//
//	testcluster up DIR --bin BINDIR [--owner-pid PID [--remove-on-exit]] [--crds PATH]...
//	testcluster down DIR                                stop exactly what up started
//	testcluster kaniko --kubeconfig FILE                 the Kaniko stand-in (started by up)
//	testcluster reap --pid PID [--remove] DIR            down DIR once PID exits (started by up)
//
// People and tests call it through tests/cluster/up and tests/cluster/down.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = upCommand(os.Args[2:])
	case "down":
		err = downCommand(os.Args[2:])
	case "kaniko":
		err = kanikoCommand(os.Args[2:])
	case "reap":
		err = reapCommand(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testcluster %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  testcluster up DIR --bin BINDIR [--owner-pid PID [--remove-on-exit]] [--crds PATH]...
  testcluster down DIR
  testcluster kaniko --kubeconfig FILE
  testcluster reap --pid PID [--remove] DIR`)
	os.Exit(2)
}
