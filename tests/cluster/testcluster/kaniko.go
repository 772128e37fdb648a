package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// The labels a test puts on a plugin (plugins.yaml's runtime labels reach the build Job's pod
// template) to steer the stand-in, and the annotations through which the stand-in tells kwok
// how the pod ends (see stages.yaml).
const (
	labelFailBuildAttempts  = "cluster.plugsync.test/fail-build-attempts"
	labelBuildSeconds       = "cluster.plugsync.test/build-seconds"
	annotationMessage       = "cluster.plugsync.test/termination-message"
	annotationFailure       = "cluster.plugsync.test/failure-message"
	annotationContainer     = "cluster.plugsync.test/result-container"
	contextFetchTimeout     = 30 * time.Second
	pushTimeout             = 60 * time.Second
	annotationWriteDeadline = 30 * time.Second
)

// attemptSuffix is plugsync's retry naming: `<plugin-id>--<N>` for attempt N ≥ 2.
var attemptSuffix = regexp.MustCompile(`--([0-9]+)$`)

func kanikoCommand(args []string) error {
	fs := flag.NewFlagSet("kaniko", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster")
	if err := fs.Parse(args); err != nil {
		return err
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	config.Timeout = 15 * time.Second
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	standin := &kaniko{client: client, inFlight: map[types.UID]bool{}}
	return standin.run(ctx)
}

// kaniko plays the Kaniko executor for build Jobs on kwok's fake node: for each running Job
// pod it downloads and checks the build context as the fetch-context init container would,
// pushes a small image built from it to every --destination, with the registry credentials
// mounted at /kaniko/.docker, and reports the pushed digest as --digest-file=/dev/termination-log
// would. kwok then ends the pod (stages.yaml).
type kaniko struct {
	client   kubernetes.Interface
	mu       sync.Mutex
	inFlight map[types.UID]bool
}

func (k *kaniko) run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(k.client, 0)
	pods := factory.Core().V1().Pods().Informer()
	handle := func(obj any) {
		if pod, ok := obj.(*corev1.Pod); ok {
			k.consider(ctx, pod)
		}
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    handle,
		UpdateFunc: func(_, obj any) { handle(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	log.Printf("kaniko stand-in: watching pods")
	<-ctx.Done()
	factory.Shutdown()
	return nil
}

func jobOwner(pod *corev1.Pod) string {
	for _, o := range pod.OwnerReferences {
		if o.Kind == "Job" {
			return o.Name
		}
	}
	return ""
}

func (k *kaniko) consider(ctx context.Context, pod *corev1.Pod) {
	if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil || jobOwner(pod) == "" {
		return
	}
	if _, done := pod.Annotations[annotationMessage]; done {
		return
	}
	if _, done := pod.Annotations[annotationFailure]; done {
		return
	}
	k.mu.Lock()
	if k.inFlight[pod.UID] {
		k.mu.Unlock()
		return
	}
	k.inFlight[pod.UID] = true
	k.mu.Unlock()
	go func() {
		defer func() {
			k.mu.Lock()
			delete(k.inFlight, pod.UID)
			k.mu.Unlock()
		}()
		container, message, failure := k.build(ctx, pod.DeepCopy())
		key := annotationMessage
		value := message
		if failure != nil {
			key, value = annotationFailure, failure.Error()
			log.Printf("%s/%s: build failed: %s", pod.Namespace, pod.Name, value)
		} else {
			log.Printf("%s/%s: built %s", pod.Namespace, pod.Name, value)
		}
		if err := k.annotate(ctx, pod, map[string]string{key: value, annotationContainer: container}); err != nil {
			log.Printf("%s/%s: recording the result: %v", pod.Namespace, pod.Name, err)
		}
	}()
}

// build does what the pod's containers would: it returns the container whose termination
// message carries the result, and either that message or the failure.
func (k *kaniko) build(ctx context.Context, pod *corev1.Pod) (string, string, error) {
	builder, args := builderContainer(pod)
	if builder == "" {
		// Not a build: a Job pod like any other, which kwok completes.
		if len(pod.Spec.Containers) == 0 {
			return "", "", nil
		}
		return pod.Spec.Containers[0].Name, "", nil
	}
	if s := pod.Labels[labelBuildSeconds]; s != "" {
		seconds, err := strconv.ParseFloat(s, 64)
		if err == nil {
			select {
			case <-time.After(time.Duration(seconds * float64(time.Second))):
			case <-ctx.Done():
				return builder, "", ctx.Err()
			}
		}
	}
	attempt := 1
	if m := attemptSuffix.FindStringSubmatch(jobOwner(pod)); m != nil {
		attempt, _ = strconv.Atoi(m[1])
	}
	if s := pod.Labels[labelFailBuildAttempts]; s != "" {
		if n, err := strconv.Atoi(s); err == nil && attempt <= n {
			return builder, "", fmt.Errorf("error building image: failed on purpose: attempt %d of the first %d (label %s)", attempt, n, labelFailBuildAttempts)
		}
	}
	layer, err := buildContext(ctx, pod)
	if err != nil {
		return builder, "", err
	}
	var destinations []string
	insecure := false
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--destination="):
			destinations = append(destinations, strings.TrimPrefix(a, "--destination="))
		case a == "--insecure" || strings.HasPrefix(a, "--insecure-registry="):
			insecure = true
		}
	}
	if len(destinations) == 0 {
		return builder, "", errors.New("error: no --destination given")
	}
	img, err := image(layer)
	if err != nil {
		return builder, "", err
	}
	keychain, err := k.credentials(ctx, pod)
	if err != nil {
		return builder, "", err
	}
	for _, d := range destinations {
		var opts []name.Option
		if insecure {
			opts = append(opts, name.Insecure)
		}
		ref, err := name.ParseReference(d, opts...)
		if err != nil {
			return builder, "", fmt.Errorf("error parsing destination %q: %w", d, err)
		}
		pushCtx, cancel := context.WithTimeout(ctx, pushTimeout)
		err = remote.Write(ref, img, remote.WithContext(pushCtx), remote.WithAuthFromKeychain(keychain),
			remote.WithTransport(transport()))
		cancel()
		if err != nil {
			return builder, "", fmt.Errorf("error pushing image: failed to push to destination %s: %w", d, err)
		}
	}
	digest, err := img.Digest()
	if err != nil {
		return builder, "", err
	}
	return builder, digest.String(), nil
}

// builderContainer is the container run with Kaniko's --destination, and its arguments.
func builderContainer(pod *corev1.Pod) (string, []string) {
	for _, c := range pod.Spec.Containers {
		for _, a := range append(append([]string{}, c.Command...), c.Args...) {
			if strings.HasPrefix(a, "--destination=") {
				return c.Name, append(append([]string{}, c.Command...), c.Args...)
			}
		}
	}
	return "", nil
}

// buildContext downloads CONTEXT_URL and checks it against CONTEXT_SHA256, as plugsync's
// fetch-context init container does with wget and sha256sum. A pod without them builds from a
// tar naming its own destination.
func buildContext(ctx context.Context, pod *corev1.Pod) ([]byte, error) {
	var url, want string
	for _, c := range pod.Spec.InitContainers {
		for _, e := range c.Env {
			switch e.Name {
			case "CONTEXT_URL":
				url = e.Value
			case "CONTEXT_SHA256":
				want = e.Value
			}
		}
	}
	if url == "" {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		body := []byte(pod.Namespace + "/" + jobOwner(pod) + "\n")
		_ = tw.WriteHeader(&tar.Header{Name: "plugsync-test-image", Mode: 0o644, Size: int64(len(body))})
		_, _ = tw.Write(body)
		_ = tw.Close()
		return buf.Bytes(), nil
	}
	fetchCtx, cancel := context.WithTimeout(ctx, contextFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(fetchCtx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch-context: wget: %w", err)
	}
	resp, err := (&http.Client{Transport: transport()}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch-context: wget: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch-context: wget: server returned error: HTTP/1.1 %s", resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetch-context: wget: %w", err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); want != "" && got != want {
		return nil, fmt.Errorf("fetch-context: sha256sum: /workspace/context.tar: FAILED (got %s, want %s)", got, want)
	}
	return data, nil
}

// image is a one-layer image of the build context: its digest follows from the context, as a
// reproducible Kaniko build's (--reproducible) does from its inputs.
func image(contextTar []byte) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(contextTar)), nil
	})
	if err != nil {
		return nil, err
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Config: v1.Config{
			Cmd:    []string{"python", "-m", "main"},
			Labels: map[string]string{"dev.plugsync.test.built-by": "testcluster kaniko stand-in"},
		},
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(base, layer)
}

// credentials reads the dockerconfigjson Secret the pod mounts at /kaniko/.docker, where
// Kaniko reads config.json from.
func (k *kaniko) credentials(ctx context.Context, pod *corev1.Pod) (authn.Keychain, error) {
	var volume string
	for _, c := range pod.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.MountPath == "/kaniko/.docker" {
				volume = m.Name
			}
		}
	}
	var secretName string
	optional := false
	for _, v := range pod.Spec.Volumes {
		if v.Name == volume && v.Secret != nil {
			secretName = v.Secret.SecretName
			optional = v.Secret.Optional != nil && *v.Secret.Optional
		}
	}
	if secretName == "" {
		return authn.NewMultiKeychain(), nil
	}
	getCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	secret, err := k.client.CoreV1().Secrets(pod.Namespace).Get(getCtx, secretName, metav1.GetOptions{})
	if err != nil {
		if optional {
			return authn.NewMultiKeychain(), nil
		}
		// The kubelet would not start the container; the stand-in fails the build instead, so
		// the test sees why.
		return nil, fmt.Errorf("error: registry credentials: secret %q: %w", secretName, err)
	}
	var config struct {
		Auths map[string]struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Auth     string `json:"auth"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(secret.Data[".dockerconfigjson"], &config); err != nil {
		return nil, fmt.Errorf("error: registry credentials: secret %q: .dockerconfigjson: %w", secretName, err)
	}
	keys := staticKeychain{}
	for host, a := range config.Auths {
		user, pass := a.Username, a.Password
		if a.Auth != "" {
			if raw, err := base64.StdEncoding.DecodeString(a.Auth); err == nil {
				if u, p, ok := strings.Cut(string(raw), ":"); ok {
					user, pass = u, p
				}
			}
		}
		host = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
		host = strings.TrimSuffix(host, "/")
		keys[host] = authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})
	}
	return keys, nil
}

// staticKeychain answers with the credentials of the registry host, as config.json's auths.
type staticKeychain map[string]authn.Authenticator

func (s staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := s[r.RegistryStr()]; ok {
		return a, nil
	}
	return authn.Anonymous, nil
}

func transport() http.RoundTripper {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
}

// annotate records the build's result on the pod with a merge patch, retried briefly: the
// pod may be changing under it (kwok's status writes).
func (k *kaniko) annotate(ctx context.Context, pod *corev1.Pod, annotations map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(annotationWriteDeadline)
	for {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = k.client.CoreV1().Pods(pod.Namespace).Patch(callCtx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		cancel()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
