// Command gotemplate renders Ollama chat templates with Go's text/template, the engine Ollama uses.
//
// It reads one JSON request on stdin, {"jobs": [...]}, and writes {"results": [...]} on stdout, so a
// whole parity suite renders in one process. Each job carries a template, messages and tools in
// Ollama's API shape, plus the think/prompt/suffix values. The variables, template functions and the
// three execution modes (messages, legacy, suffix) follow Ollama's template package as described in
// localserve's docs/ollama.md#go-template. Standard library only, so it builds offline.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ---- the values a template sees (Ollama's api types, trimmed to what templates read) ----

type ToolCallFunctionArguments map[string]any

// String makes `{{ .Function.Arguments }}` print as JSON, as in Ollama.
func (a ToolCallFunctionArguments) String() string { return marshal(map[string]any(a)) }

type ToolCallFunction struct {
	Index     int                       `json:"index"`
	Name      string                    `json:"name"`
	Arguments ToolCallFunctionArguments `json:"arguments"`
}

type ToolCall struct {
	ID       string           `json:"id,omitempty"`
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking,omitempty"`
	Images     []string   `json:"images,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolName   string     `json:"tool_name,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// PropertyType is a JSON-schema type: one name, or several (printed as an array).
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*pt = PropertyType{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*pt = many
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt PropertyType) String() string {
	if len(pt) == 1 {
		return pt[0]
	}
	return fmt.Sprint([]string(pt))
}

type ToolProperty struct {
	Type        PropertyType `json:"type,omitempty"`
	Items       any          `json:"items,omitempty"`
	Description string       `json:"description,omitempty"`
	Enum        []any        `json:"enum,omitempty"`
}

func (p ToolProperty) String() string { return marshal(p) }

type ToolFunctionParameters struct {
	Type       string                  `json:"type"`
	Defs       any                     `json:"$defs,omitempty"`
	Items      any                     `json:"items,omitempty"`
	Required   []string                `json:"required,omitempty"`
	Properties map[string]ToolProperty `json:"properties"`
}

func (p ToolFunctionParameters) String() string { return marshal(p) }

type ToolFunction struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description,omitempty"`
	Parameters  ToolFunctionParameters `json:"parameters"`
}

func (f ToolFunction) String() string { return marshal(f) }

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

func (t Tool) String() string { return marshal(t) }

func marshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// ---- template functions Ollama adds ----

func tsType(t string) string {
	switch t {
	case "string":
		return "string"
	case "number", "integer":
		return "number"
	case "boolean":
		return "boolean"
	case "array":
		return "any[]"
	case "object":
		return "Record<string, any>"
	case "null":
		return "null"
	}
	return "any"
}

func toTypeScriptType(v any) string {
	p, ok := v.(ToolProperty)
	if !ok {
		return "any"
	}
	if len(p.Type) == 0 {
		return "any"
	}
	names := make([]string, 0, len(p.Type))
	for _, t := range p.Type {
		names = append(names, tsType(t))
	}
	return strings.Join(names, " | ")
}

var funcs = template.FuncMap{
	"json": func(v any) string { return marshal(v) },
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
	"yesterdayDate": func(args ...string) string {
		return time.Now().AddDate(0, 0, -1).Format("2006-01-02")
	},
	"toTypeScriptType": toTypeScriptType,
}

// ---- parsing: Ollama appends {{ .Response }} when neither .Messages nor .Response is used ----

func identifiers(n parse.Node) []string {
	var out []string
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		switch t := n.(type) {
		case nil:
		case *parse.ListNode:
			if t == nil {
				return
			}
			for _, c := range t.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(t.Pipe)
		case *parse.IfNode:
			walk(&t.BranchNode)
		case *parse.RangeNode:
			walk(&t.BranchNode)
		case *parse.WithNode:
			walk(&t.BranchNode)
		case *parse.BranchNode:
			walk(t.Pipe)
			if t.List != nil {
				walk(t.List)
			}
			if t.ElseList != nil {
				walk(t.ElseList)
			}
		case *parse.TemplateNode:
			if t.Pipe != nil {
				walk(t.Pipe)
			}
		case *parse.PipeNode:
			if t == nil {
				return
			}
			for _, c := range t.Cmds {
				walk(c)
			}
		case *parse.CommandNode:
			for _, a := range t.Args {
				walk(a)
			}
		case *parse.FieldNode:
			out = append(out, t.Ident...)
		case *parse.VariableNode:
			if len(t.Ident) > 1 {
				out = append(out, t.Ident[1:]...)
			}
		case *parse.ChainNode:
			walk(t.Node)
			out = append(out, t.Field...)
		}
	}
	walk(n)
	return out
}

type compiled struct {
	tmpl *template.Template
	vars map[string]bool
}

func compile(text string) (*compiled, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(text)
	if err != nil {
		return nil, err
	}
	vars := map[string]bool{}
	for _, tt := range tmpl.Templates() {
		if tt.Tree == nil || tt.Tree.Root == nil {
			continue
		}
		for _, id := range identifiers(tt.Tree.Root) {
			vars[strings.ToLower(id)] = true
		}
	}
	if !vars["messages"] && !vars["response"] {
		response := &parse.ActionNode{
			NodeType: parse.NodeAction,
			Pipe: &parse.PipeNode{
				NodeType: parse.NodePipe,
				Cmds: []*parse.CommandNode{{
					NodeType: parse.NodeCommand,
					Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
				}},
			},
		}
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, response)
	}
	return &compiled{tmpl: tmpl, vars: vars}, nil
}

// cutAfterResponse copies the tree, keeping everything up to the first use of .Response: in
// legacy mode the final turn ends where the model's answer would begin.
func cutAfterResponse(root *parse.ListNode) *parse.ListNode {
	cut := false
	var walk func(parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if f, ok := n.(*parse.FieldNode); ok {
			for _, id := range f.Ident {
				if id == "Response" {
					cut = true
					return n
				}
			}
		}
		if cut {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var kept []parse.Node
			for _, c := range t.Nodes {
				if k := walk(c); k != nil {
					kept = append(kept, k)
				}
			}
			t.Nodes = kept
		case *parse.IfNode:
			walkBranch(&t.BranchNode, walk)
		case *parse.WithNode:
			walkBranch(&t.BranchNode, walk)
		case *parse.RangeNode:
			walkBranch(&t.BranchNode, walk)
		case *parse.ActionNode:
			p := walk(t.Pipe)
			if p == nil {
				return nil
			}
			t.Pipe = p.(*parse.PipeNode)
		case *parse.PipeNode:
			var cmds []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if k := walk(a); k != nil {
						args = append(args, k)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				cmds = append(cmds, c)
			}
			if len(cmds) == 0 {
				return nil
			}
			t.Cmds = cmds
		}
		return n
	}
	out := walk(root.CopyList())
	if out == nil {
		return &parse.ListNode{NodeType: parse.NodeList}
	}
	return out.(*parse.ListNode)
}

func walkBranch(b *parse.BranchNode, walk func(parse.Node) parse.Node) {
	if b.List != nil {
		if l, ok := walk(b.List).(*parse.ListNode); ok {
			b.List = l
		} else {
			b.List = &parse.ListNode{NodeType: parse.NodeList}
		}
	}
	if b.ElseList != nil {
		if l, ok := walk(b.ElseList).(*parse.ListNode); ok {
			b.ElseList = l
		} else {
			b.ElseList = nil
		}
	}
}

// ---- execution ----

type Job struct {
	Template    string    `json:"template"`
	Messages    []Message `json:"messages"`
	Tools       []Tool    `json:"tools"`
	Prompt      string    `json:"prompt"`
	Suffix      string    `json:"suffix"`
	Think       bool      `json:"think"`
	ThinkLevel  string    `json:"think_level"`
	IsThinkSet  bool      `json:"is_think_set"`
	ForceLegacy bool      `json:"force_legacy"`
}

type Result struct {
	Text  string  `json:"text"`
	Error *string `json:"error"`
	Mode  string  `json:"mode"`
}

// collate joins every system message into .System and merges consecutive same-role messages
// (tool results excepted) with a blank line, as Ollama does before rendering.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func run(c *compiled, j Job) (string, string, error) {
	var b bytes.Buffer
	system, msgs := collate(j.Messages)
	think := map[string]any{"Think": j.Think, "ThinkLevel": j.ThinkLevel, "IsThinkSet": j.IsThinkSet}
	with := func(m map[string]any) map[string]any {
		for k, v := range think {
			m[k] = v
		}
		return m
	}
	if j.Prompt != "" && j.Suffix != "" {
		err := c.tmpl.Execute(&b, with(map[string]any{"Prompt": j.Prompt, "Suffix": j.Suffix, "Response": ""}))
		return b.String(), "suffix", err
	}
	if !j.ForceLegacy && c.vars["messages"] {
		tools := j.Tools
		if tools == nil {
			tools = []Tool{}
		}
		err := c.tmpl.Execute(&b, with(map[string]any{
			"System": system, "Messages": msgs, "Tools": tools, "Response": "",
		}))
		return b.String(), "messages", err
	}

	// Legacy mode: one execution per user/assistant turn; tool messages are dropped.
	system = ""
	var prompt, response string
	flush := func() error {
		err := c.tmpl.Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": response}))
		system, prompt, response = "", "", ""
		return err
	}
	for _, m := range msgs {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := flush(); err != nil {
					return "", "legacy", err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := flush(); err != nil {
					return "", "legacy", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	last, err := template.New("").Option("missingkey=zero").Funcs(funcs).AddParseTree("", &parse.Tree{Root: cutAfterResponse(c.tmpl.Tree.Root)})
	if err != nil {
		return "", "legacy", err
	}
	for _, tt := range c.tmpl.Templates() {
		if tt.Name() != "" && tt.Tree != nil {
			if _, err := last.AddParseTree(tt.Name(), tt.Tree); err != nil {
				return "", "legacy", err
			}
		}
	}
	err = last.Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": response}))
	return b.String(), "legacy", err
}

func main() {
	var req struct {
		Jobs []Job `json:"jobs"`
	}
	dec := json.NewDecoder(os.Stdin)
	if err := dec.Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: bad request JSON:", err)
		os.Exit(2)
	}
	cache := map[string]*compiled{}
	parseErrs := map[string]error{}
	results := make([]Result, 0, len(req.Jobs))
	for _, j := range req.Jobs {
		c, ok := cache[j.Template]
		err := parseErrs[j.Template]
		if !ok && err == nil {
			c, err = compile(j.Template)
			cache[j.Template] = c
			parseErrs[j.Template] = err
		}
		var r Result
		if err != nil {
			msg := "template parse: " + err.Error()
			r.Error = &msg
		} else {
			text, mode, err := run(c, j)
			r.Mode = mode
			if err != nil {
				var ee template.ExecError
				msg := err.Error()
				if errors.As(err, &ee) {
					msg = "template execute: " + msg
				}
				r.Error = &msg
			} else {
				r.Text = text
			}
		}
		results = append(results, r)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	if err := out.Encode(map[string]any{"results": results}); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: write:", err)
		os.Exit(1)
	}
}
