package deploy

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The parts of Kubernetes objects the sidecar example is checked on.
type k8sObject struct {
	Kind     string
	Metadata struct{ Name string }
	Data     map[string]string
	Spec     struct {
		Template struct {
			Metadata struct{ Annotations map[string]string }
			Spec     podSpec
		}
	}
}

type podSpec struct {
	TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
	InitContainers                []container `yaml:"initContainers"`
	Containers                    []container
	Volumes                       []struct {
		Name      string
		ConfigMap *struct{ Name string } `yaml:"configMap"`
	}
}

type container struct {
	Name          string
	Image         string
	RestartPolicy string `yaml:"restartPolicy"`
	Env           []struct {
		Name      string
		Value     string
		ValueFrom *struct {
			SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	Ports []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	Resources       struct{ Requests, Limits map[string]string }
	SecurityContext struct {
		RunAsNonRoot             bool  `yaml:"runAsNonRoot"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string
		Port yaml.Node
	} `yaml:"httpGet"`
}

// decodeAll reads every document of a YAML stream.
func decodeAll[T any](t *testing.T, text string) []T {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(text))
	var docs []T
	for {
		var d T
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("YAML: %v", err)
		}
		docs = append(docs, d)
	}
}

// mebibytes reads a memory quantity in Mi or Gi (or GOMEMLIMIT's MiB, GiB).
func mebibytes(t *testing.T, q string) int {
	t.Helper()
	m := regexp.MustCompile(`^(\d+)(Mi|Gi|MiB|GiB)$`).FindStringSubmatch(q)
	if m == nil {
		t.Fatalf("memory quantity %q: want Mi or Gi", q)
	}
	n, _ := strconv.Atoi(m[1])
	if strings.HasPrefix(m[2], "G") {
		n *= 1024
	}
	return n
}

// TestKubernetesSidecar checks deploy/kubernetes/funnel-sidecar.yaml: funnel
// is a native sidecar with its probes on the metrics port, its ports are
// the ones it listens on, every environment variable is one funnel (or Go)
// reads, the config it mounts passes --check, and the app points at it.
func TestKubernetesSidecar(t *testing.T) {
	text := readFile(t, "kubernetes/funnel-sidecar.yaml")
	objects := decodeAll[k8sObject](t, text)
	var pod *podSpec
	var annotations map[string]string
	configMaps := map[string]map[string]string{}
	for i, o := range objects {
		switch o.Kind {
		case "Deployment":
			pod, annotations = &objects[i].Spec.Template.Spec, o.Spec.Template.Metadata.Annotations
		case "ConfigMap":
			configMaps[o.Metadata.Name] = o.Data
		}
	}
	if pod == nil || len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("want a Deployment with one init container (funnel) and one app container")
	}
	f := pod.InitContainers[0]
	if f.Name != "funnel" || f.RestartPolicy != "Always" {
		t.Errorf("funnel is not a native sidecar: init container %q with restartPolicy %q", f.Name, f.RestartPolicy)
	}
	if f.Image != "funnel:latest" {
		t.Errorf("image %q: want funnel:latest, the tag make docker gives", f.Image)
	}

	// The environment, with the Secret's URL and the ConfigMap's file
	// standing in for what the kubelet provides.
	env := map[string]string{}
	secretRef := ""
	for _, e := range f.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			secretRef = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
			env[e.Name] = "rediss://default:PASSWORD@xyz.upstash.io:6379"
			if e.Name != "FUNNEL_UPSTREAM" {
				t.Errorf("the Secret sets %s, want FUNNEL_UPSTREAM", e.Name)
			}
		default:
			env[e.Name] = e.Value
		}
	}
	// The Secret the header's kubectl command makes is the one referenced.
	m := regexp.MustCompile(`kubectl create secret generic (\S+) \\\n#\s+--from-literal=(\w+)=`).FindStringSubmatch(text)
	if m == nil || m[1]+"/"+m[2] != secretRef {
		t.Errorf("the Secret referenced (%s) is not the one the comment's kubectl command creates (%v)", secretRef, m)
	}
	mounted := env["FUNNEL_CONFIG"]
	if mounted == "" {
		t.Fatal("FUNNEL_CONFIG is not set")
	}
	var file string
	for _, vm := range f.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil && filepath.Dir(mounted) == vm.MountPath {
				file = configMaps[v.ConfigMap.Name][filepath.Base(mounted)]
			}
		}
	}
	if file == "" {
		t.Fatalf("FUNNEL_CONFIG %s is no key of a mounted ConfigMap", mounted)
	}
	local := filepath.Join(t.TempDir(), "funnel.yaml")
	if err := os.WriteFile(local, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	env["FUNNEL_CONFIG"] = local
	c := checkEnvNames(t, "the sidecar", env)
	if c.source["cache"] != "file "+local+":3" {
		t.Errorf("the ConfigMap's cache rule is not used: %q", c.source["cache"])
	}

	// Ports: the ones funnel listens on (its default ports).
	defaults := check(t, map[string]string{"FUNNEL_UPSTREAM": "redis://127.0.0.1:6379"})
	ports := map[string]int{}
	for _, p := range f.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, setting := range map[string]string{"redis": "listen", "metrics": "metrics-listen"} {
		if got, want := strconv.Itoa(ports[name]), port(t, c.value[setting]); got != want {
			t.Errorf("container port %s is %s, but funnel's --%s is %s", name, got, setting, c.value[setting])
		}
		if got, want := port(t, c.value[setting]), port(t, defaults.value[setting]); got != want {
			t.Errorf("--%s port %s is not funnel's default %s", setting, got, want)
		}
		if !strings.HasPrefix(c.value[setting], "0.0.0.0:") {
			t.Errorf("--%s is %s: the kubelet's probes and Prometheus need 0.0.0.0", setting, c.value[setting])
		}
	}
	if annotations["prometheus.io/port"] != strconv.Itoa(ports["metrics"]) {
		t.Errorf("prometheus.io/port %q is not the metrics port", annotations["prometheus.io/port"])
	}

	// Probes: readiness on /readyz, liveness on /healthz, on the metrics port.
	for _, p := range []struct {
		name, path string
		probe      *probe
	}{{"readinessProbe", "/readyz", f.ReadinessProbe}, {"livenessProbe", "/healthz", f.LivenessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s.httpGet", p.name)
			continue
		}
		port := p.probe.HTTPGet.Port.Value
		if port != "metrics" && port != strconv.Itoa(ports["metrics"]) {
			t.Errorf("%s on port %s, not the metrics port", p.name, port)
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s path %s, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		}
	}

	// Resources: set, and consistent with the measurement in the comment.
	r := f.Resources
	for _, q := range []string{r.Requests["cpu"], r.Limits["cpu"], r.Requests["memory"], r.Limits["memory"]} {
		if q == "" {
			t.Fatalf("resources incomplete: %+v", r)
		}
	}
	measured := regexp.MustCompile(`-c 200 \(all default tests\): peak (\d+) MiB`).FindStringSubmatch(text)
	if measured == nil {
		t.Fatal("the comment gives no measured peak RSS for 200 clients")
	}
	peak, _ := strconv.Atoi(measured[1])
	req, limit := mebibytes(t, r.Requests["memory"]), mebibytes(t, r.Limits["memory"])
	if req < peak || limit < req+64 {
		t.Errorf("memory request %d Mi must cover the measured %d MiB, and the limit %d Mi the request plus the 64 MiB cache", req, peak, limit)
	}
	if gml := mebibytes(t, env["GOMEMLIMIT"]); gml >= limit || gml < limit*3/4 {
		t.Errorf("GOMEMLIMIT %d MiB should be a little under the limit %d Mi", gml, limit)
	}
	sc := f.SecurityContext
	if !sc.RunAsNonRoot || !sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("securityContext: %+v", sc)
	}
	if pod.TerminationGracePeriodSeconds <= 10 {
		t.Errorf("terminationGracePeriodSeconds %d leaves funnel's --shutdown-timeout (10s) no room", pod.TerminationGracePeriodSeconds)
	}

	// The app talks to funnel.
	app := pod.Containers[0]
	var redisURL string
	for _, e := range app.Env {
		if e.Name == "REDIS_URL" {
			redisURL = e.Value
		}
	}
	if redisURL != "redis://127.0.0.1:"+strconv.Itoa(ports["redis"]) {
		t.Errorf("the app's REDIS_URL %q is not funnel in the same pod", redisURL)
	}
}
