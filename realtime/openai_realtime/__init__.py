"""OpenAI Realtime (GA) compatibility: the same sessions, spoken to in OpenAI's wire protocol.

    GET  /v1/realtime?model=...   WebSocket; audio travels as base64 in input_audio_buffer.append and
                                  response.output_audio.delta (websocket.py)
    POST /v1/realtime/calls       WebRTC: SDP offer in, 201 + SDP answer out; events on the `oai-events` data
                                  channel, audio on the media track (calls.py)

`protocol.py` translates: GA client events become calls on a `Session`, the session's own events become GA server
events. `session_config.py` maps GA session objects onto Parley's [session] settings. Nothing here knows a model.
docs/OPENAI_REALTIME.md has the event-by-event mapping and what is not supported.
"""
