package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	serviceCIDR      = "10.96.0.0/16"
	serviceClusterIP = "10.96.0.1"
	podCIDR          = "10.244.0.0/16"
	nodeIP           = "10.244.0.1"
	// NodeName is the one fake node: pods of every test are scheduled onto it.
	nodeName = "kwok-node-0"
	// How long up waits for any one component before it gives up.
	componentTimeout = 90 * time.Second
)

// The stages plugsync's tests add to kwok's own (which up copies from the pinned kwok
// module): build pods end as the Kaniko stand-in says, and pods can be made unready.
//
//go:embed stages.yaml
var plugsyncStages string

type upFlags struct {
	dir      string
	bin      string
	ownerPid int
	crds     []string
	// removeOnExit: the reaper deletes dir after stopping the cluster (a test binary's
	// throw-away cluster; its logs go with it).
	removeOnExit bool
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func upCommand(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	var f upFlags
	fs.StringVar(&f.bin, "bin", "", "folder holding kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok and kwok-stages/")
	fs.IntVar(&f.ownerPid, "owner-pid", 0, "stop the cluster when this process exits")
	fs.BoolVar(&f.removeOnExit, "remove-on-exit", false, "with --owner-pid: also delete DIR once the cluster is stopped")
	var crds stringList
	fs.Var(&crds, "crds", "a CustomResourceDefinition YAML file or folder to install before the controller manager starts (repeatable)")
	// DIR first, flags after it, as tests/cluster/up passes them.
	if len(args) < 1 || strings.HasPrefix(args[0], "-") {
		usage()
	}
	f.dir = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	f.crds = crds
	if f.bin == "" {
		return errors.New("--bin is required")
	}
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	f.dir = dir
	started := time.Now()
	if err := up(f); err != nil {
		// Leave nothing running behind a failed up; the logs stay for the reader.
		_ = down(f.dir)
		return err
	}
	registry, _ := os.ReadFile(filepath.Join(f.dir, "registry"))
	fmt.Printf("cluster up in %.1f s\n  export KUBECONFIG=%s\n  registry: %s\n  stop: tests/cluster/down %s\n",
		time.Since(started).Seconds(), filepath.Join(f.dir, "kubeconfig"), strings.TrimSpace(string(registry)), f.dir)
	return nil
}

func up(f upFlags) error {
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return err
	}
	if procs, err := readPids(f.dir); err == nil {
		for _, p := range procs {
			if p.alive() {
				return fmt.Errorf("%s is already running a cluster (%s, pid %d): run tests/cluster/down %s first", f.dir, p.name, p.pid, f.dir)
			}
		}
		_ = os.Remove(filepath.Join(f.dir, pidsFile))
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
		if _, err := os.Stat(filepath.Join(f.bin, b)); err != nil {
			return fmt.Errorf("%s: %w (build it with tests/cluster/build)", filepath.Join(f.bin, b), err)
		}
	}
	registryBin, err := exec.LookPath("docker-registry")
	if err != nil {
		return errors.New("docker-registry is not installed: apt-get install docker-registry (Debian's OCI distribution registry)")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, stale := range []string{"etcd", "registry-data"} {
		if err := os.RemoveAll(filepath.Join(f.dir, stale)); err != nil {
			return err
		}
	}
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kwokPort, registryPort := ports[0], ports[1], ports[2], ports[3], ports[4]

	if f.ownerPid > 0 {
		argv := []string{self, "reap", "--pid", strconv.Itoa(f.ownerPid)}
		if f.removeOnExit {
			argv = append(argv, "--remove")
		}
		if _, err := startProcess(f.dir, "reap", append(argv, f.dir), nil); err != nil {
			return err
		}
	}

	certs, err := generatePKI(filepath.Join(f.dir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	kubeconfig := filepath.Join(f.dir, "kubeconfig")
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writeKubeconfig(kubeconfig, server, certs); err != nil {
		return err
	}

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	etcd, err := startProcess(f.dir, "etcd", []string{
		filepath.Join(f.bin, "etcd"),
		"--name=default",
		"--data-dir=" + filepath.Join(f.dir, "etcd"),
		"--unsafe-no-fsync",
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--log-level=warn",
	}, nil)
	if err != nil {
		return err
	}
	if err := waitHTTP(f.dir, etcd, http.DefaultClient, etcdURL+"/health"); err != nil {
		return err
	}

	apiserver, err := startProcess(f.dir, "kube-apiserver", []string{
		filepath.Join(f.bin, "kube-apiserver"),
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file=" + certs.path("apiserver.crt"),
		"--tls-private-key-file=" + certs.path("apiserver.key"),
		"--client-ca-file=" + certs.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + certs.path("sa.pub"),
		"--service-account-signing-key-file=" + certs.path("sa.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		// Loopback addresses are not valid Endpoints for the kubernetes Service.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}, nil)
	if err != nil {
		return err
	}
	adminClient, err := adminHTTPClient(certs)
	if err != nil {
		return err
	}
	if err := waitHTTP(f.dir, apiserver, adminClient, server+"/readyz"); err != nil {
		return err
	}

	// The garbage collector learns of a CRD created after it started only at its next
	// discovery sync (30 s): CRDs the tests need are installed before it starts.
	if err := installCRDs(kubeconfig, f.crds); err != nil {
		return err
	}
	if _, err := startProcess(f.dir, "kube-controller-manager", []string{
		filepath.Join(f.bin, "kube-controller-manager"),
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--root-ca-file=" + certs.path("ca.crt"),
		"--service-account-private-key-file=" + certs.path("sa.key"),
		"--use-service-account-credentials=false",
		// The default 20/30 makes a Deployment take seconds to show Ready.
		"--kube-api-qps=100",
		"--kube-api-burst=200",
	}, nil); err != nil {
		return err
	}
	if _, err := startProcess(f.dir, "kube-scheduler", []string{
		filepath.Join(f.bin, "kube-scheduler"),
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--kube-api-qps=100",
		"--kube-api-burst=200",
	}, nil); err != nil {
		return err
	}

	stages, err := kwokStages(f.bin)
	if err != nil {
		return err
	}
	stagesFile := filepath.Join(f.dir, "kwok-stages.yaml")
	if err := os.WriteFile(stagesFile, []byte(stages), 0o644); err != nil {
		return err
	}
	if _, err := startProcess(f.dir, "kwok", []string{
		filepath.Join(f.bin, "kwok"),
		"--kubeconfig=" + kubeconfig,
		"--config=" + stagesFile,
		"--manage-nodes-with-label-selector=type=kwok",
		"--cidr=" + podCIDR,
		"--node-ip=" + nodeIP,
		fmt.Sprintf("--server-address=127.0.0.1:%d", kwokPort),
		"--node-lease-duration-seconds=40",
	}, nil); err != nil {
		return err
	}

	registryAddr := fmt.Sprintf("127.0.0.1:%d", registryPort)
	registryConfig := filepath.Join(f.dir, "registry.yml")
	if err := os.WriteFile(registryConfig, []byte(fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(f.dir, "registry-data"), registryAddr)), 0o644); err != nil {
		return err
	}
	registry, err := startProcess(f.dir, "docker-registry", []string{registryBin, "serve", registryConfig}, nil)
	if err != nil {
		return err
	}
	if err := waitHTTP(f.dir, registry, http.DefaultClient, "http://"+registryAddr+"/v2/"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.dir, "registry"), []byte(registryAddr+"\n"), 0o644); err != nil {
		return err
	}

	if _, err := startProcess(f.dir, "kaniko", []string{self, "kaniko", "--kubeconfig", kubeconfig}, nil); err != nil {
		return err
	}

	return waitUsable(f.dir, kubeconfig)
}

// waitUsable creates the fake node and returns once it is Ready and the default namespace's
// default ServiceAccount exists (pods are refused until it does).
func waitUsable(dir, kubeconfig string) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), componentTimeout)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: nodeName,
		Labels: map[string]string{
			"type":                   "kwok",
			"kubernetes.io/hostname": nodeName,
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     "amd64",
		},
		Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
	}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating node %s: %w", nodeName, err)
	}
	for {
		ready, saReady := false, false
		if n, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready = true
				}
			}
		}
		if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err == nil {
			saReady = true
		}
		if ready && saReady {
			return nil
		}
		if err := checkAlive(dir); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: node %s Ready=%v, ServiceAccount default/default exists=%v (logs in %s)",
				componentTimeout, nodeName, ready, saReady, filepath.Join(dir, "logs"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkAlive fails, with the end of its log, when a process up started has exited.
func checkAlive(dir string) error {
	procs, err := readPids(dir)
	if err != nil {
		return err
	}
	for _, p := range procs {
		if !p.alive() {
			return fmt.Errorf("%s exited:\n%s", p.name, logTail(dir, p.name))
		}
	}
	return nil
}

func logTail(dir, name string) string {
	data, err := os.ReadFile(filepath.Join(dir, "logs", name+".log"))
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// waitHTTP waits until url answers 200, failing early if p exits.
func waitHTTP(dir string, p process, client *http.Client, url string) error {
	deadline := time.Now().Add(componentTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			cancel()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s answered %s", url, resp.Status)
		} else {
			cancel()
			last = err
		}
		if !p.alive() {
			return fmt.Errorf("%s exited:\n%s", p.name, logTail(dir, p.name))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v\n%s", p.name, componentTimeout, last, logTail(dir, p.name))
}

func adminHTTPClient(certs pki) (*http.Client, error) {
	pair, err := tls.LoadX509KeyPair(certs.path("admin.crt"), certs.path("admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(certs.path("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}},
	}, nil
}

func writeKubeconfig(path, server string, certs pki) error {
	read := func(name string) (string, error) {
		data, err := os.ReadFile(certs.path(name))
		return base64.StdEncoding.EncodeToString(data), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read("admin.crt")
	if err != nil {
		return err
	}
	key, err := read("admin.key")
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: plugsync-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: plugsync-test
  context:
    cluster: plugsync-test
    user: admin
    namespace: default
current-context: plugsync-test
`, server, ca, crt, key)), 0o600)
}

// kwokStages joins kwok's own stages (copied from the pinned module by tests/cluster/build)
// with plugsync's.
func kwokStages(bin string) (string, error) {
	dir := filepath.Join(bin, "kwok-stages")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("kwok's stages: %w (rebuild with tests/cluster/build)", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var docs []string
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		docs = append(docs, strings.TrimSpace(string(data)))
	}
	docs = append(docs, strings.TrimSpace(plugsyncStages))
	return strings.Join(docs, "\n---\n") + "\n", nil
}

// freePorts asks the kernel for n free loopback ports, holding all of them until each is
// known so none is handed out twice.
func freePorts(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
