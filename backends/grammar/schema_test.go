package grammar

import (
	"errors"
	"strings"
	"testing"
)

// fanSchema is the example of docs/protocol.md §11.4.1.
const fanSchema = `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3},` +
	`"valve":{"enum":["open","closed"]},"note":{"type":"string","maxLength":8}},"required":["fan","valve"]}`

func TestParseGBNF(t *testing.T) {
	tests := []struct {
		name, schema string
		want         []string // lines the grammar must contain
		maxBytes     int
	}{
		{"fan", fanSchema, []string{
			`root ::= r4`,
			`r0 ::= "0" | "1" | "2" | "3"`,
			`r1 ::= "\"open\"" | "\"closed\""`,
			`r2 ::= [ !#-\[\]-~] | "\\" ["\\/bfnrt]`,
			`r3 ::= "\"" r2{0,8} "\""`,
			`r4 ::= "{\"fan\":" r0 ",\"valve\":" r1 ",\"note\":" r3 "}"`,
		}, 2 + 2 + (5 + 1 + 1) + (7 + 1 + 8) + (6 + 1 + 18)},
		{"bool", `{"type":"boolean"}`, []string{`root ::= ("true" | "false")`}, 5},
		{"null", `{"type":"null","description":"nothing"}`, []string{`root ::= "null"`}, 4},
		{"empty object", `{"type":"object"}`, []string{`root ::= "{}"`}, 2},
		{"empty string", `{"type":"string","maxLength":0}`, []string{`root ::= "\"\""`}, 2},
		{"array", `{"type":"array","items":{"type":"boolean"},"minItems":1,"maxItems":3}`,
			[]string{`r0 ::= "[" ("true" | "false") ("," ("true" | "false")){0,2} "]"`}, 2 + 3*5 + 2},
		{"array exact", `{"type":"array","items":{"type":"null"},"minItems":2,"maxItems":2}`,
			[]string{`r0 ::= "[" "null" ("," "null"){1} "]"`}, 11},
		{"array one", `{"type":"array","items":{"type":"null"},"maxItems":1}`,
			[]string{`r0 ::= "[" ("null")? "]"`}, 6},
		{"array none", `{"type":"array","items":{"type":"null"},"maxItems":0}`, []string{`root ::= "[]"`}, 2},
		{"natural", `{"type":"integer","minimum":0}`, []string{`r0 ::= "0" | [1-9] [0-9]{0,14}`, `root ::= r0`}, 16},
		{"integer", `{"type":"integer"}`, []string{`r1 ::= "-"? r0`}, 16},
		{"negative range", `{"type":"integer","minimum":-2,"maximum":1}`, []string{`r0 ::= "-2" | "-1" | "0" | "1"`}, 2},
		{"number", `{"type":"number"}`, []string{`r1 ::= "-"? r0 ("." [0-9]{1,6})?`}, 23},
		{"const", `{"const":"a\"<\n"}`, []string{`r0 ::= "\"a\\\"<\\n\""`}, 8},
		{"enum mixed", `{"enum":[1,"x",true,null,1]}`, []string{`r0 ::= "1" | "\"x\"" | "true" | "null"`}, 4},
		{"anyOf", `{"anyOf":[{"type":"null"},{"type":"boolean"}]}`, []string{`r0 ::= "null" | ("true" | "false")`}, 5},
		{"unicode key", `{"type":"object","properties":{"température":{"type":"null"}}}`,
			[]string{`r0 ::= "{\"temp\\u00e9rature\":" "null" "}"`}, 2 + 18 + 1 + 4},
		{"astral enum", `{"enum":["😀"]}`, []string{`r0 ::= "\"\\ud83d\\ude00\""`}, 14},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.schema))
			if err != nil {
				t.Fatal(err)
			}
			g := s.GBNF()
			for _, w := range tt.want {
				if !strings.Contains(g, w+"\n") {
					t.Errorf("grammar lacks %q:\n%s", w, g)
				}
			}
			if got := s.MaxBytes(); got != tt.maxBytes {
				t.Errorf("MaxBytes = %d, want %d", got, tt.maxBytes)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, schema, want string }{
		{"not json", `{"type":`, "EOF"},
		{"trailing", `{"type":"null"} 1`, "data after"},
		{"not object", `[1]`, "must be an object"},
		{"no type", `{"properties":{}}`, "needs type"},
		{"type list", `{"type":["null","string"]}`, "one string"},
		{"unknown type", `{"type":"date"}`, `type "date"`},
		{"pattern", `{"type":"string","pattern":"^a"}`, `"pattern"`},
		{"format", `{"type":"string","format":"email"}`, `"format"`},
		{"ref", `{"$ref":"#/x"}`, "needs type"},
		{"oneOf", `{"type":"object","oneOf":[]}`, `"oneOf"`},
		{"maxLength big", `{"type":"string","maxLength":100000}`, "maxLength"},
		{"maxLength neg", `{"type":"string","maxLength":-1}`, "maxLength"},
		{"maxLength float", `{"type":"string","maxLength":1.5}`, "maxLength"},
		{"min above max", `{"type":"string","minLength":5,"maxLength":2}`, "minLength above"},
		{"items missing", `{"type":"array"}`, "needs items"},
		{"maxItems big", `{"type":"array","items":{"type":"null"},"maxItems":65}`, "maxItems"},
		{"int max only", `{"type":"integer","maximum":3}`, "integer bound"},
		{"int min 1", `{"type":"integer","minimum":1}`, "integer bound"},
		{"int wide", `{"type":"integer","minimum":0,"maximum":5000}`, "range"},
		{"int reversed", `{"type":"integer","minimum":3,"maximum":1}`, "range"},
		{"number bound", `{"type":"number","minimum":0}`, `"minimum"`},
		{"enum empty", `{"enum":[]}`, "enum must list"},
		{"enum object", `{"enum":[{}]}`, "must be strings"},
		{"enum extra", `{"enum":["a"],"maxLength":1}`, `"maxLength"`},
		{"required unknown", `{"type":"object","properties":{},"required":["x"]}`, "not a property"},
		{"duplicate key", `{"type":"null","type":"null"}`, "repeated"},
		{"too deep", strings.Repeat(`{"type":"array","items":`, 10) + `{"type":"null"}` + strings.Repeat("}", 10), "deeper"},
		{"too long", `{"type":"array","maxItems":64,"items":{"type":"array","maxItems":64,"items":{"type":"boolean"}}}`, "answers of up to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.schema))
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("err = %v, want ErrUnsupported", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	s, err := Parse([]byte(fanSchema))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		answer, want string // want "" = valid
	}{
		{`{"fan":3,"valve":"open","note":""}`, ""},
		{`{"fan":0,"valve":"closed","note":"\u00e9\"\\\n<>"}`, ""},
		{`{"fan":0,"valve":"closed","note":"é"}`, "ASCII"},
		{`{"fan":4,"valve":"open","note":""}`, "out of range"},
		{`{"fan":1.0,"valve":"open","note":""}`, "not an integer"},
		{`{"fan":1,"valve":"ajar","note":""}`, "not one of"},
		{`{"fan":1,"valve":"open","note":"123456789"}`, "9 characters"},
		{`{"fan":1,"valve":"open"}`, "2 properties"},
		{`{"valve":"open","fan":1,"note":""}`, `is "valve"`},
		{`{"fan":1, "valve":"open","note":""}`, "not minified"},
		{`{"fan":1,"valve":"open","note":""}x`, "invalid character"},
		{"{\"fan\":1,\"valve\":\"open\",\"note\":\"\xff\"}", "ASCII"},
		{`[]`, "want an object"},
		{``, "unexpected end"},
	}
	for _, tt := range tests {
		err := s.Validate([]byte(tt.answer))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Validate(%s) = %v, want valid", tt.answer, err)
		case tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Validate(%s) = %v, want ErrInvalid mentioning %q", tt.answer, err, tt.want)
		}
	}
}

// FuzzParse: no schema a device can send makes Parse panic, and what it
// accepts yields a grammar within the bounds it promises.
func FuzzParse(f *testing.F) {
	for _, s := range []string{fanSchema, `{"type":"boolean"}`, `{"anyOf":[{"type":"null"},{"enum":[1,"a"]}]}`,
		`{"type":"array","items":{"type":"string","maxLength":3},"maxItems":2}`, `{"type":"number"}`,
		`{"type":"integer","minimum":-5,"maximum":5}`, `{"type":"object","properties":{"a":{"type":"object"}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v is not ErrUnsupported", err)
			}
			return
		}
		if n := s.MaxBytes(); n <= 0 || n > MaxAnswerBytes {
			t.Fatalf("MaxBytes %d", n)
		}
		g := s.GBNF()
		if !strings.HasPrefix(g, "root ::= ") {
			t.Fatalf("grammar without root:\n%s", g)
		}
		if _, err := Parse(s.JSON()); err != nil {
			t.Fatalf("the minified schema does not parse again: %v", err)
		}
	})
}

// FuzzValidate: answers are judged without panicking.
func FuzzValidate(f *testing.F) {
	f.Add([]byte(fanSchema), []byte(`{"fan":3,"valve":"open","note":""}`))
	f.Add([]byte(`{"type":"array","items":{"type":"number"}}`), []byte(`[1.5,-0,2e3]`))
	f.Fuzz(func(t *testing.T, schema, answer []byte) {
		s, err := Parse(schema)
		if err != nil {
			return
		}
		if err := s.Validate(answer); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v is not ErrInvalid", err)
		}
	})
}
