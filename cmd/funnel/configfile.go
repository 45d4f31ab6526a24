package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// fileSetting is one key of the config file: its values as written (one
// for a scalar, one per item for a list) and the line it is on.
type fileSetting struct {
	values []string
	line   int
}

// readConfigFile reads a YAML mapping whose keys are flag names, for
// example
//
//	upstream: rediss://default:PASSWORD@xyz.upstash.io:6379
//	pool-size: 10
//	cache: ['bull:*=2s']
//
// It returns every key it could use and one problem for each it could not:
// an unknown key, a key given twice, a list for a setting that takes one
// value, a nested mapping, or a file that is not a YAML mapping at all.
func readConfigFile(path string, fs *pflag.FlagSet) (map[string]fileSetting, []string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []string{fmt.Sprintf("config file: %v", err)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, []string{fmt.Sprintf("%s: not YAML: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil // an empty file sets nothing
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, []string{fmt.Sprintf("%s:%d: want a mapping of setting: value (like pool-size: 10)", path, top.Line)}
	}
	settings := map[string]fileSetting{}
	var problems []string
	bad := func(n *yaml.Node, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d: ", path, n.Line)+fmt.Sprintf(format, args...))
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		name := k.Value
		f := fs.Lookup(name)
		switch {
		case k.Kind != yaml.ScalarNode:
			bad(k, "a key must be a setting's name")
			continue
		case name == "config":
			bad(k, "config: a config file cannot name another one")
			continue
		case actions[name]:
			bad(k, "%s: an action, not a setting; give it on the command line", name)
			continue
		case f == nil:
			bad(k, "unknown setting %q%s", name, suggest(name, fs))
			continue
		}
		if prev, dup := settings[name]; dup {
			bad(k, "%s: given twice (also on line %d)", name, prev.line)
			continue
		}
		list := strings.HasSuffix(f.Value.Type(), "Slice") || strings.HasSuffix(f.Value.Type(), "Array")
		var values []string
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag != "!!null" {
				values = []string{v.Value}
			} else if !list {
				values = []string{""}
			}
		case yaml.SequenceNode:
			if !list {
				bad(v, "%s: takes one value, not a list", name)
				continue
			}
			ok := true
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					bad(item, "%s: list items must be plain values", name)
					ok = false
					break
				}
				values = append(values, item.Value)
			}
			if !ok {
				continue
			}
		default:
			bad(v, "%s: want a value or a list of values, not a mapping", name)
			continue
		}
		settings[name] = fileSetting{values: values, line: k.Line}
	}
	return settings, problems
}

// suggest names the setting an unknown key probably meant.
func suggest(key string, fs *pflag.FlagSet) string {
	guess := strings.ToLower(strings.NewReplacer("_", "-", " ", "-").Replace(key))
	guess = strings.TrimPrefix(strings.TrimPrefix(guess, "--"), "funnel-")
	if f := fs.Lookup(guess); f != nil && !actions[guess] {
		return fmt.Sprintf(" (did you mean %s?)", guess)
	}
	return " (the keys are the flags' names, as funnel --help lists them)"
}
