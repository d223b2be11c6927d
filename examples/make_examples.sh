#!/usr/bin/env bash
# Make the example clips for `python -m qieemo_lobes.classify` with espeak-ng and sox.
#
# Every clip is synthesised here, so all of them are redistributable (no corpus audio is copied).
# Output (16 kHz, mono, 16 bit), next to this script unless a folder is given:
#   neutral_en_us_m.wav   ~3 s  plain statement, default prosody
#   excited_en_gb_f.wav   ~3 s  fast, high and wide pitch, loud
#   sad_en_us_m.wav       ~4 s  slow, low and flat pitch, quiet
#   neutral_de_f.wav      ~3 s  German (an EmoDB-style sentence), female variant
#   question_en_gb_m.wav  ~3 s  rising question, medium tempo
#   conversation.flac     ~40 s two "speakers" taking turns with pauses (long-recording path), FLAC
#   conversation_segments.tsv  start_s end_s voice text of each utterance in conversation.flac
#
# Needs: espeak-ng and sox (Debian: apt-get install -y espeak-ng sox).
# Usage: examples/make_examples.sh [OUT_DIR]
set -euo pipefail

out_dir="${1:-$(cd "$(dirname "$0")" && pwd)}"
for tool in espeak-ng sox soxi; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make_examples.sh: '$tool' not found (apt-get install -y espeak-ng sox)" >&2
        exit 1
    fi
done
mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# say OUT VOICE SPEED PITCH AMPLITUDE PITCH_RANGE TEXT   (PITCH_RANGE: x-low low medium high x-high,
# set with SSML <prosody range>, as espeak-ng has no command-line option for it)
# espeak-ng writes 22.05 kHz mono; sox lowers it by 1 dB (no clipping in the resampler), trims
# its leading/trailing silence (below 0.1 % for 50 ms), converts it to 16 kHz / 16 bit without
# dither (-R -D: the same bytes on every run) and adds 150 ms of silence either side.
say() {
    local out="$1" voice="$2" speed="$3" pitch="$4" amp="$5" range="$6" text="$7"
    espeak-ng -v "$voice" -s "$speed" -p "$pitch" -a "$amp" -m -w "$work/raw.wav" \
        "<speak><prosody range=\"$range\">$text</prosody></speak>"
    sox -R -D "$work/raw.wav" -r 16000 -c 1 -b 16 "$work/tmp.wav" gain -1 \
        silence 1 0.05 0.1% reverse silence 1 0.05 0.1% reverse pad 0.15 0.15
    mv "$work/tmp.wav" "$out"
}

# --- short clips (2-5 s, different voices, prosody variation) -------------------------------
say "$out_dir/neutral_en_us_m.wav" en-us+m3 160 50 100 medium \
    "The meeting starts at ten o'clock tomorrow morning."
say "$out_dir/excited_en_gb_f.wav" en-gb+f3 210 80 140 x-high \
    "I can't believe it, we actually won the whole thing!"
say "$out_dir/sad_en_us_m.wav" en-us+m1 120 25 70 x-low \
    "I am so tired. Nothing ever changes around here."
say "$out_dir/neutral_de_f.wav" de+f2 150 55 100 medium \
    "Der Lappen liegt auf dem Eisschrank."
say "$out_dir/question_en_gb_m.wav" en-gb+m2 170 45 110 high \
    "Are you really sure that this is the right way home?"

# --- ~40 s conversation: utterances joined by known pauses ----------------------------------
# Each line: voice speed pitch amplitude range pause_after_s text
turns=(
    "en-us+m3|160|45|110|medium|1.2|Hello, thanks for calling. How can I help you today?"
    "en-gb+f2|170|60|110|medium|1.0|Hi. I ordered a parcel two weeks ago and it still has not arrived."
    "en-us+m3|160|45|110|medium|1.5|I am sorry to hear that. Could you give me the order number, please?"
    "en-gb+f2|180|70|130|high|0.8|Yes, it is four five seven, two one nine. This is the third time I call!"
    "en-us+m3|150|40|100|low|2.0|Thank you. Let me check that for you. One moment, please."
    "en-us+m3|160|50|110|medium|1.0|I can see the parcel was sent to the wrong address."
    "en-gb+f2|200|80|140|x-high|1.2|The wrong address? That is unbelievable. I need it by Friday."
    "en-us+m3|150|45|100|medium|1.0|I understand. I will send a new one today, with express delivery."
    "en-gb+f2|140|55|100|low|0.0|Alright. Thank you, that is very kind of you. Goodbye."
)
pieces=()
tsv="$work/segments.tsv"
printf 'start_s\tend_s\tvoice\ttext\n' >"$tsv"
t=0.5
sox -R -n -r 16000 -c 1 -b 16 "$work/lead.wav" trim 0 0.5
pieces+=("$work/lead.wav")
i=0
for turn in "${turns[@]}"; do
    IFS='|' read -r voice speed pitch amp range pause text <<<"$turn"
    utt="$work/utt_$i.wav"
    espeak-ng -v "$voice" -s "$speed" -p "$pitch" -a "$amp" -m -w "$work/raw.wav" \
        "<speak><prosody range=\"$range\">$text</prosody></speak>"
    # Trim espeak-ng's own leading/trailing silence so the .tsv times are the speech itself.
    sox -R -D "$work/raw.wav" -r 16000 -c 1 -b 16 "$utt" gain -1 \
        silence 1 0.05 0.1% reverse silence 1 0.05 0.1% reverse
    dur="$(soxi -D "$utt")"
    end="$(awk -v a="$t" -v b="$dur" 'BEGIN { printf "%.3f", a + b }')"
    printf '%.3f\t%s\t%s\t%s\n' "$t" "$end" "$voice" "$text" >>"$tsv"
    pieces+=("$utt")
    if [ "$pause" != "0.0" ]; then
        sox -R -n -r 16000 -c 1 -b 16 "$work/pause_$i.wav" trim 0 "$pause"
        pieces+=("$work/pause_$i.wav")
    fi
    t="$(awk -v a="$end" -v b="$pause" 'BEGIN { printf "%.3f", a + b }')"
    i=$((i + 1))
done
sox -R -n -r 16000 -c 1 -b 16 "$work/tail.wav" trim 0 0.5
pieces+=("$work/tail.wav")
sox -R -D "${pieces[@]}" "$work/conversation.flac"
mv "$work/conversation.flac" "$out_dir/conversation.flac"
mv "$tsv" "$out_dir/conversation_segments.tsv"

for f in "$out_dir"/*.wav "$out_dir/conversation.flac"; do
    printf '%-28s %6.2f s\n' "$(basename "$f")" "$(soxi -D "$f")"
done
du -ch "$out_dir"/*.wav "$out_dir/conversation.flac" "$out_dir/conversation_segments.tsv" | tail -1
