package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs server-side-applies every CustomResourceDefinition in paths (files, or folders
// of .yaml files) with field manager "testcluster" and waits until each is Established.
func installCRDs(kubeconfig string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.Timeout = 10 * time.Second
	client, err := dynamic.NewForConfig(config)
	if err != nil {
		return err
	}
	var files []string
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("--crds: %w", err)
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		matches, _ := filepath.Glob(filepath.Join(p, "*.yaml"))
		files = append(files, matches...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), componentTimeout)
	defer cancel()
	var names []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var object unstructured.Unstructured
			if err := decoder.Decode(&object.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("%s: %w", file, err)
			}
			if object.GetKind() != "CustomResourceDefinition" {
				continue
			}
			body, err := json.Marshal(object.Object)
			if err != nil {
				return err
			}
			force := true
			if _, err := client.Resource(crdResource).Patch(ctx, object.GetName(), types.ApplyPatchType, body,
				metav1.PatchOptions{FieldManager: "testcluster", Force: &force}); err != nil {
				return fmt.Errorf("%s: applying %s: %w", file, object.GetName(), err)
			}
			names = append(names, object.GetName())
		}
	}
	for _, name := range names {
		for {
			crd, err := client.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not Established after %s", name, componentTimeout)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(os.Stderr, "testcluster: installed %s\n", strings.Join(names, ", "))
	}
	return nil
}

func established(crd *unstructured.Unstructured) bool {
	conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conditions {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
